//! Files outside the storage root that COPY reads and UNLOAD writes: an `s3://bucket/prefix`
//! or a `file:///path`. As in Redshift, a location names a key prefix: every object whose key
//! starts with it is part of a COPY.

use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};
use url::Url;

use crate::{Error, Result};

/// An external location: its object store and the key prefix it names.
#[derive(Debug, Clone)]
pub struct ExternalLocation {
    store: Arc<dyn ObjectStore>,
    /// `s3://bucket/` or `file:///`: what object paths are relative to.
    base: Url,
    prefix: String,
}

impl ExternalLocation {
    /// Parses `s3://bucket/prefix` or `file:///absolute/path`. S3 credentials, region and
    /// endpoint come from the environment, as for the storage root.
    pub fn parse(location: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidLocation {
            location: location.to_string(),
            reason: reason.to_string(),
        };
        let url = Url::parse(location).map_err(|e| invalid(&e.to_string()))?;
        match url.scheme() {
            "s3" | "s3a" => {
                let bucket = url
                    .host_str()
                    .ok_or_else(|| invalid("missing bucket name"))?;
                let store = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .build()?;
                let base =
                    Url::parse(&format!("s3://{bucket}/")).map_err(|e| invalid(&e.to_string()))?;
                Ok(Self {
                    store: Arc::new(store),
                    base,
                    prefix: url.path().trim_start_matches('/').to_string(),
                })
            }
            "file" => {
                let path = url
                    .to_file_path()
                    .map_err(|()| invalid("not an absolute file path"))?;
                let base = Url::parse("file:///").map_err(|e| invalid(&e.to_string()))?;
                Ok(Self {
                    store: Arc::new(LocalFileSystem::new()),
                    base,
                    prefix: path
                        .to_str()
                        .ok_or_else(|| invalid("the path is not UTF-8"))?
                        .trim_start_matches('/')
                        .to_string(),
                })
            }
            _ => Err(invalid(
                "COPY and UNLOAD read and write s3:// and file:// locations",
            )),
        }
    }

    /// The object store, for readers that take one (DataFusion's Parquet reader).
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// `s3://bucket/` or `file:///`.
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// Every object whose key starts with the prefix, in key order.
    pub async fn list(&self) -> Result<Vec<Path>> {
        // Objects are listed under the prefix's parent "directory" and filtered by the full
        // prefix, since a prefix can end in the middle of a file name.
        let parent = self
            .prefix
            .rfind('/')
            .map(|index| Path::from(&self.prefix[..index]));
        let listed: Vec<_> = match self.store.list(parent.as_ref()).try_collect().await {
            Ok(listed) => listed,
            Err(object_store::Error::NotFound { .. }) => vec![],
            Err(err) => return Err(err.into()),
        };
        let mut files: Vec<Path> = listed
            .into_iter()
            .map(|meta| meta.location)
            .filter(|location| location.as_ref().starts_with(self.prefix.as_str()))
            .collect();
        files.sort();
        Ok(files)
    }

    /// The full URL of an object, for messages and for readers.
    pub fn url_of(&self, path: &Path) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn read(&self, path: &Path) -> Result<Bytes> {
        Ok(self.store.get(path).await?.bytes().await?)
    }

    /// An object's bytes a piece of a few megabytes at a time, read as the stream is polled,
    /// so that a reader of a large file never holds it whole.
    pub async fn read_stream(
        &self,
        path: &Path,
    ) -> Result<futures::stream::BoxStream<'static, std::io::Result<Bytes>>> {
        use futures::StreamExt;
        const PIECE: u64 = 8 << 20;
        let size = self.store.head(path).await?.size;
        let (store, path) = (self.store.clone(), path.clone());
        let pieces = futures::stream::iter((0..size).step_by(PIECE as usize)).then(move |start| {
            let (store, path) = (store.clone(), path.clone());
            async move {
                store
                    .get_range(&path, start..(start + PIECE).min(size))
                    .await
                    .map_err(std::io::Error::other)
            }
        });
        Ok(pieces.boxed())
    }

    /// Reads the object named `<prefix><suffix>`.
    pub async fn read_suffix(&self, suffix: &str) -> Result<Bytes> {
        self.read(&Path::from(format!("{}{suffix}", self.prefix)))
            .await
    }

    /// Writes one object named `<prefix><suffix>` and returns its URL.
    pub async fn write(&self, suffix: &str, bytes: Bytes) -> Result<String> {
        let path = Path::from(format!("{}{suffix}", self.prefix));
        if self.base.scheme() == "file"
            && let Some(parent) = std::path::Path::new(&format!("/{path}")).parent()
        {
            std::fs::create_dir_all(parent).map_err(|e| Error::InvalidLocation {
                location: self.url_of(&path),
                reason: e.to_string(),
            })?;
        }
        self.store.put(&path, PutPayload::from(bytes)).await?;
        Ok(self.url_of(&path))
    }
}
