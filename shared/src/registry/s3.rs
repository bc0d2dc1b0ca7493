//! A registry in an S3-compatible object store (`s3://bucket/prefix`), through the
//! `object_store` crate. Versions' files are plain puts (their keys are content-addressed);
//! manifests and history events are create-only (`If-None-Match: *`); aliases are replaced
//! with `If-Match: <etag>`, so concurrent promotions never lose an update.
//!
//! Configuration comes from the environment as for any AWS client: `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_REGION` (or `AWS_DEFAULT_REGION`), and for S3-compatible
//! servers `AWS_ENDPOINT` (e.g. `http://127.0.0.1:9000`) with `AWS_ALLOW_HTTP=true`.

use super::store::{Result, Store, Tagged};
use super::RegistryError;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload, UpdateVersion};
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct S3Store {
    url: String,
    prefix: String,
    store: AmazonS3,
    rt: tokio::runtime::Runtime,
}

fn err(what: &str, e: impl std::fmt::Display) -> RegistryError {
    RegistryError::Io(format!("{what}: {e}"))
}

impl S3Store {
    /// `s3://bucket[/prefix]`.
    pub fn new(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| RegistryError::Invalid(format!("`{url}` is not an s3:// URL")))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(RegistryError::Invalid(format!("`{url}`: no bucket")));
        }
        let store = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .build()
            .map_err(|e| err(url, e))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| err("starting the object-store client", e))?;
        Ok(Self {
            url: url.trim_end_matches('/').to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            store,
            rt,
        })
    }

    fn path(&self, key: &str) -> ObjPath {
        if self.prefix.is_empty() {
            ObjPath::from(key)
        } else {
            ObjPath::from(format!("{}/{key}", self.prefix))
        }
    }

    fn key_of(&self, p: &ObjPath) -> String {
        let s = p.as_ref();
        if self.prefix.is_empty() {
            s.to_string()
        } else {
            s.strip_prefix(&format!("{}/", self.prefix))
                .unwrap_or(s)
                .to_string()
        }
    }

    /// Runs an object-store call to completion on this store's runtime, from any thread
    /// (a scoped thread, so callers inside another async runtime are fine too).
    fn run<T: Send>(&self, f: impl std::future::Future<Output = Result<T>> + Send) -> Result<T> {
        std::thread::scope(|s| {
            s.spawn(|| self.rt.block_on(f))
                .join()
                .unwrap_or_else(|_| Err(RegistryError::Io("object-store call panicked".into())))
        })
    }

    async fn conditional(&self, key: &str, data: &[u8], mode: PutMode) -> Result<bool> {
        let opts = PutOptions {
            mode,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&self.path(key), PutPayload::from(data.to_vec()), opts)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(false),
            Err(e) => Err(err(&format!("{}/{key}", self.url), e)),
        }
    }
}

impl Store for S3Store {
    fn describe(&self) -> String {
        self.url.clone()
    }

    fn get(&self, key: &str) -> Result<Option<Tagged>> {
        self.run(async {
            match self.store.get(&self.path(key)).await {
                Ok(r) => {
                    let tag = r.meta.e_tag.clone().unwrap_or_default();
                    let data = r.bytes().await.map_err(|e| err(key, e))?;
                    Ok(Some(Tagged {
                        data: data.to_vec(),
                        tag,
                    }))
                }
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(err(&format!("{}/{key}", self.url), e)),
            }
        })
    }

    fn put_new(&self, key: &str, data: &[u8]) -> Result<bool> {
        self.run(self.conditional(key, data, PutMode::Create))
    }

    fn put_file_new(&self, key: &str, src: &Path) -> Result<bool> {
        // Version files are content-addressed: an existing key already holds these bytes
        // (the manifest, written last and create-only, is what makes a version visible).
        let exists = self.run(async {
            match self.store.head(&self.path(key)).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(err(key, e)),
            }
        })?;
        if exists {
            return Ok(false);
        }
        self.run(async {
            let upload = self
                .store
                .put_multipart(&self.path(key))
                .await
                .map_err(|e| err(key, e))?;
            let mut w = object_store::WriteMultipart::new(upload);
            let mut f = std::fs::File::open(src).map_err(|e| err(&src.display().to_string(), e))?;
            let mut buf = vec![0u8; 8 << 20];
            loop {
                let n = std::io::Read::read(&mut f, &mut buf)
                    .map_err(|e| err(&src.display().to_string(), e))?;
                if n == 0 {
                    break;
                }
                w.write(&buf[..n]);
            }
            w.finish().await.map_err(|e| err(key, e))?;
            Ok(true)
        })
    }

    fn put_if(&self, key: &str, data: &[u8], expected: Option<&str>) -> Result<bool> {
        let mode = match expected {
            None => PutMode::Create,
            Some(tag) => PutMode::Update(UpdateVersion {
                e_tag: Some(tag.to_string()),
                version: None,
            }),
        };
        self.run(self.conditional(key, data, mode))
    }

    fn get_to_file(&self, key: &str, dest: &Path) -> Result<()> {
        if let Some(p) = dest.parent() {
            std::fs::create_dir_all(p).map_err(|e| err(&p.display().to_string(), e))?;
        }
        let tmp: PathBuf = dest.with_extension("download");
        self.run(async {
            let r = self
                .store
                .get(&self.path(key))
                .await
                .map_err(|e| err(&format!("{}/{key}", self.url), e))?;
            let mut f =
                std::fs::File::create(&tmp).map_err(|e| err(&tmp.display().to_string(), e))?;
            let mut stream = r.into_stream();
            while let Some(chunk) = stream.try_next().await.map_err(|e| err(key, e))? {
                f.write_all(&chunk)
                    .map_err(|e| err(&tmp.display().to_string(), e))?;
            }
            f.sync_all()
                .map_err(|e| err(&tmp.display().to_string(), e))?;
            Ok(())
        })?;
        std::fs::rename(&tmp, dest).map_err(|e| err(&dest.display().to_string(), e))
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let prefix = prefix.trim_end_matches('/');
        let p = if prefix.is_empty() && self.prefix.is_empty() {
            None
        } else if prefix.is_empty() {
            Some(ObjPath::from(self.prefix.as_str()))
        } else {
            Some(self.path(prefix))
        };
        let mut keys: Vec<String> = self.run(async {
            self.store
                .list(p.as_ref())
                .map_ok(|m| self.key_of(&m.location))
                .try_collect()
                .await
                .map_err(|e| err(&self.url, e))
        })?;
        keys.sort();
        Ok(keys)
    }

    fn delete_prefix(&self, prefix: &str) -> Result<()> {
        // The key itself (an object) and everything under it (a "directory").
        let exact = prefix.trim_end_matches('/').to_string();
        let mut keys = self.list(&exact)?;
        keys.push(exact);
        self.run(async {
            for k in &keys {
                match self.store.delete(&self.path(k)).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(err(k, e)),
                }
            }
            Ok(())
        })
    }

    fn local_path(&self, _key: &str) -> Option<PathBuf> {
        None
    }
}
