//! The PromQL the project ships: every target of every dashboard in `dashboards/*.json` and every alert
//! rule of `dashboards/alerts.yml`, as the tests read them.

use std::path::PathBuf;

pub fn dashboards_dir() -> PathBuf {
    crate::repo_root().join("dashboards")
}

/// Each dashboard file with its parsed JSON, sorted by file name.
pub fn dashboards() -> Vec<(String, serde_json::Value)> {
    let mut out: Vec<(String, serde_json::Value)> = std::fs::read_dir(dashboards_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let v = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: not JSON: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().into_owned(), v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// (where, expr) of every panel target: `file#id title/refId`.
pub fn panel_queries() -> Vec<(String, String)> {
    let mut out = vec![];
    for (file, d) in dashboards() {
        for p in d["panels"].as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                out.push((
                    format!("{file}#{} {}/{}", p["id"], p["title"], t["refId"]),
                    t["expr"].as_str().unwrap_or_default().to_string(),
                ));
            }
        }
    }
    out
}

/// The rules of `alerts.yml`: (alert name, expr).
pub fn alert_rules() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(dashboards_dir().join("alerts.yml")).unwrap();
    let v: serde_json::Value = serde_yaml_ng::from_str(&text).expect("alerts.yml is YAML");
    let mut out = vec![];
    for g in v["groups"].as_array().into_iter().flatten() {
        for r in g["rules"].as_array().into_iter().flatten() {
            out.push((
                r["alert"].as_str().unwrap_or_default().to_string(),
                r["expr"].as_str().unwrap_or_default().to_string(),
            ));
        }
    }
    out
}

/// Grafana's interval variables, as a query in the last few minutes would have them.
pub fn expand_grafana_variables(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "5m")
}

/// The operands of an alert expression's top-level comparisons and set operations (`a > 2 * b and c == 1` →
/// `a`, `2 * b`, `c`, `1`): each one is a signal that must exist for the rule to mean anything, though the
/// whole expression is empty while nothing is wrong. `on(…)`/`ignoring(…)`/`bool` modifiers are dropped.
pub fn operands(expr: &str) -> Vec<String> {
    let b = expr.as_bytes();
    let (mut depth, mut brackets, mut quote) = (0i32, 0i32, None::<u8>);
    let mut cuts: Vec<(usize, usize)> = vec![];
    let mut i = 0;
    let word_at = |i: usize, w: &str| {
        expr[i..].starts_with(w)
            && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'))
            && b.get(i + w.len())
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || *c == b'_'))
    };
    while i < b.len() {
        let c = b[i];
        if let Some(q) = quote {
            if c == b'\\' {
                i += 1;
            } else if c == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        match c {
            b'"' | b'\'' | b'`' => quote = Some(c),
            b'(' => depth += 1,
            b')' => depth -= 1,
            b'[' | b'{' => brackets += 1,
            b']' | b'}' => brackets -= 1,
            _ if depth == 0 && brackets == 0 => {
                let op = [">=", "<=", "==", "!=", ">", "<"]
                    .iter()
                    .find(|o| expr[i..].starts_with(*o))
                    .map(|o| o.len())
                    .or_else(|| {
                        ["and", "or", "unless"]
                            .iter()
                            .find(|w| word_at(i, w))
                            .map(|w| w.len())
                    });
                if let Some(n) = op {
                    cuts.push((i, i + n));
                    i += n;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    let mut parts = vec![];
    let mut start = 0;
    for (a, z) in cuts.into_iter().chain([(expr.len(), expr.len())]) {
        parts.push(expr[start..a].to_string());
        start = z;
    }
    parts
        .into_iter()
        .map(|p| strip_modifiers(p.trim()))
        .filter(|p| !p.is_empty())
        .collect()
}

fn strip_modifiers(mut s: &str) -> String {
    loop {
        let t = s.trim_start();
        let next = ["bool", "on", "ignoring", "group_left", "group_right"]
            .iter()
            .find_map(|w| {
                let rest = t.strip_prefix(w)?;
                let rest_t = rest.trim_start();
                if *w == "bool" {
                    return rest.starts_with(char::is_whitespace).then_some(rest_t);
                }
                let inner = rest_t.strip_prefix('(')?;
                Some(&inner[inner.find(')')? + 1..])
            });
        match next {
            Some(rest) => s = rest,
            None => return t.to_string(),
        }
    }
}

/// Whether an operand reads a series (not a number or `time()` alone).
pub fn reads_series(operand: &str) -> bool {
    operand.contains("safeloop_")
}

#[cfg(test)]
mod tests {
    #[test]
    fn operands_split_top_level_comparisons_and_set_operations() {
        assert_eq!(
            super::operands(
                "time() - x{a=\"<\"} > 1800 and on (job, command) y == 1 unless bool z[5m] >= sum by (l) (w > 2)"
            ),
            vec![
                "time() - x{a=\"<\"}",
                "1800",
                "y",
                "1",
                "z[5m]",
                "sum by (l) (w > 2)"
            ]
        );
        assert_eq!(super::operands("rate(a[5m])"), vec!["rate(a[5m])"]);
    }
}
