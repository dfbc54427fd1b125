//! The local disk as an object store: object_store's own, except that a read of many ranges of
//! one file reads neighbouring ranges together. A lookup by key reads a page or two of each
//! row group it touches in every column it needs, pages of some 100 bytes each a few KiB
//! apart: one read call for each cost more than the bytes between them. Small reads run on
//! the caller's thread rather than a blocking thread's.

use std::fmt;
use std::ops::Range;
use std::os::unix::fs::FileExt as _;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

/// Ranges of a file at most this far apart are read in one call. Reading the gap costs a
/// copy of its bytes from the page cache, some microseconds for this many; a read call costs
/// about as much.
const MERGE_GAP: u64 = 16 * 1024;

/// A merged read is not made longer than this: the ranges' callers hold the whole read as
/// long as they hold any range of it.
const MERGED_MAX: u64 = 4 * 1024 * 1024;

/// Reads of at most this many bytes in all run on the caller's thread: a page-cache copy of
/// them takes less time than handing them to a blocking thread and back (a lookup reads a
/// few KiB of each row group it touches), and at worst a disk read holds the thread as long.
const INLINE_MAX: u64 = 256 * 1024;

/// See the module documentation.
pub struct LocalStore {
    inner: LocalFileSystem,
}

impl LocalStore {
    pub fn new(inner: LocalFileSystem) -> Self {
        Self { inner }
    }
}

impl fmt::Display for LocalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.inner, f)
    }
}

/// The reads that cover `ranges`: (start, end, the indexes of the ranges within), ranges
/// ordered by start and merged where at most [`MERGE_GAP`] apart.
fn merged_reads(ranges: &[Range<u64>]) -> Vec<(u64, u64, Vec<usize>)> {
    let mut order: Vec<usize> = (0..ranges.len()).collect();
    order.sort_by_key(|&i| ranges[i].start);
    let mut reads: Vec<(u64, u64, Vec<usize>)> = Vec::new();
    for i in order {
        let range = &ranges[i];
        match reads.last_mut() {
            Some((start, end, within))
                if range.start <= end.saturating_add(MERGE_GAP)
                    && range.end.max(*end) - *start <= MERGED_MAX =>
            {
                *end = (*end).max(range.end);
                within.push(i);
            }
            _ => reads.push((range.start, range.end, vec![i])),
        }
    }
    reads
}

/// Reads `ranges` of the file at `path` by the `reads` that cover them ([`merged_reads`]).
fn read_merged(
    path: &std::path::Path,
    ranges: &[Range<u64>],
    reads: Vec<(u64, u64, Vec<usize>)>,
) -> Result<Vec<Bytes>> {
    let file = std::fs::File::open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            object_store::Error::NotFound {
                path: path.display().to_string(),
                source: source.into(),
            }
        } else {
            read_error(path, source)
        }
    })?;
    let mut out = vec![Bytes::new(); ranges.len()];
    for (start, end, within) in reads {
        let mut buffer = vec![0u8; (end - start) as usize];
        file.read_exact_at(&mut buffer, start)
            .map_err(|source| read_error(path, source))?;
        let buffer = Bytes::from(buffer);
        for i in within {
            let range = &ranges[i];
            out[i] = buffer.slice((range.start - start) as usize..(range.end - start) as usize);
        }
    }
    Ok(out)
}

fn read_error(path: &std::path::Path, source: std::io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "LocalFileSystem",
        source: format!("reading {}: {source}", path.display()).into(),
    }
}

#[async_trait]
impl ObjectStore for LocalStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        options: PutOptions,
    ) -> Result<PutResult> {
        self.inner.put_opts(location, payload, options).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        options: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, options).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let path = self.inner.path_to_filesystem(location)?;
        let reads = merged_reads(ranges);
        let bytes: u64 = reads.iter().map(|(start, end, _)| end - start).sum();
        if bytes <= INLINE_MAX {
            return read_merged(&path, ranges, reads);
        }
        let ranges = ranges.to_vec();
        tokio::task::spawn_blocking(move || read_merged(&path, &ranges, reads))
            .await
            .map_err(|e| object_store::Error::JoinError { source: e })?
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use object_store::ObjectStoreExt as _;

    use super::*;

    #[test]
    fn near_ranges_are_read_together_and_far_ones_apart() {
        let ranges = vec![
            100_000..100_100,
            0..10,
            20..30,
            10..25,
            30 + MERGE_GAP..30 + MERGE_GAP + 5,
            10 * MERGED_MAX..10 * MERGED_MAX + 1,
        ];
        assert_eq!(
            merged_reads(&ranges),
            vec![
                (0, 30 + MERGE_GAP + 5, vec![1, 3, 2, 4]),
                (100_000, 100_100, vec![0]),
                (10 * MERGED_MAX, 10 * MERGED_MAX + 1, vec![5]),
            ]
        );
        // A merge stops at its longest.
        let ranges = vec![0..MERGED_MAX, MERGED_MAX..MERGED_MAX + 1];
        assert_eq!(merged_reads(&ranges).len(), 2);
    }

    #[tokio::test]
    async fn ranges_read_together_are_the_bytes_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let path = Path::from("f");
        store.put(&path, data.clone().into()).await.unwrap();
        let ranges = vec![5..9, 150_000..150_010, 0..3, 7..20, 20..20, 40_000..40_001];
        let read = store.get_ranges(&path, &ranges).await.unwrap();
        for (range, bytes) in ranges.iter().zip(read) {
            assert_eq!(&bytes[..], &data[range.start as usize..range.end as usize]);
        }
        let missing = store.get_ranges(&Path::from("g"), &ranges).await;
        assert!(matches!(missing, Err(object_store::Error::NotFound { .. })));
        // Past the end of the file is an error, not short bytes.
        assert!(
            store
                .get_ranges(&path, &[0..1, 199_999..200_001])
                .await
                .is_err()
        );
    }
}
