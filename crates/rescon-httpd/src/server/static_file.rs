//! Stage: static files. A file from the vhost's cache, or resolved beneath the document root
//! (and cached if small), answered with its validators, conditional requests and ranges
//! ([`static_files::plan`](crate::static_files::plan)); a large file streams a chunk at a time.

use super::respond::{Body, simple};
use crate::static_files::{
    BodyPlan, DocRoot, FileMeta, OpenFile, RelPath, Resolved, ResponsePlan, Validators, is_plain,
    plan, plan_with,
};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Files at most this large are kept in memory.
pub(crate) const CACHE_MAX_FILE: u64 = 256 * 1024;
/// Entries kept at most per vhost; a full cache is emptied and refills with what is asked for.
const CACHE_MAX_ENTRIES: usize = 4096;
/// How long a cached file is served before it is resolved and checked again (nginx's
/// `open_file_cache_valid` is 60 s by default).
const CACHE_VALID: Duration = Duration::from_secs(1);

/// Small static files of one vhost in memory, like nginx's `open_file_cache` but holding the
/// bytes too: a hit costs no system call, where resolving, opening, checking and reading a
/// file costs five (openat2, statx, lseek, read, close; measured with strace), about a third
/// of a keep-alive request's time. An entry is served for at most [`CACHE_VALID`]; then the
/// path is resolved again beneath the root (so a replaced file or a new symlink is noticed
/// within that time) and re-read. Written by hand: what is cached is the result of our own
/// confined resolution, which no caching crate knows about.
///
/// Keyed by the raw request path: a hit was routed as a static file, and its path checked,
/// when it was cached, under this site (a reload compiles a new site with an empty cache).
#[derive(Default)]
pub(crate) struct FileCache {
    /// Hashed with foldhash, seeded per process; a client can add at most
    /// [`CACHE_MAX_ENTRIES`] keys (paths of existing files) before the cache is emptied.
    map: RwLock<HashMap<Box<str>, Arc<CachedFile>, foldhash::quality::RandomState>>,
}

/// A cached file: its metadata, validators, the headers of a plain 200, and its bytes.
pub(crate) struct CachedFile {
    meta: FileMeta,
    validators: Validators,
    /// The headers of a plain 200 ([`is_plain`]), built once per file.
    plain: HeaderMap,
    body: Bytes,
    checked: Instant,
}

impl FileCache {
    /// The entry for `path`, if it is still valid at `now`.
    pub(crate) fn get(&self, path: &str, now: Instant) -> Option<Arc<CachedFile>> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        let hit = map.get(path)?;
        (now.duration_since(hit.checked) < CACHE_VALID).then(|| hit.clone())
    }

    fn put(&self, path: &str, file: Arc<CachedFile>) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if map.len() >= CACHE_MAX_ENTRIES {
            map.clear();
        }
        map.insert(path.into(), file);
    }
}

/// What the dispatch stage found for a static request.
pub(crate) enum StaticTarget {
    /// A valid cache entry.
    Cached(Arc<CachedFile>),
    /// A path to resolve beneath the root.
    Path(RelPath),
}

/// Serves a static request of `req` on the vhost with document root `root` and cache
/// `cache` (keyed by the raw request path). A plain 200 takes `req`'s header map for its own
/// (see [`plain_headers`]).
pub(crate) fn serve<B>(
    root: &DocRoot,
    cache: &FileCache,
    req: &mut Request<B>,
    target: StaticTarget,
    now: Instant,
) -> Response<Body> {
    let cached = match target {
        StaticTarget::Cached(c) => c,
        StaticTarget::Path(rel) => match open(root, rel) {
            Ok(file) if file.meta.len > CACHE_MAX_FILE => return serve_open_file(file, req),
            Ok(file) => match cache_file(file, now) {
                Ok(c) => {
                    cache.put(req.uri().path(), c.clone());
                    c
                }
                Err(r) => return r,
            },
            Err(r) => return r,
        },
    };
    let head = req.method() == Method::HEAD;
    if is_plain(req.method(), req.headers()) {
        let headers = plain_headers(&cached, std::mem::take(req.headers_mut()));
        return respond(
            StatusCode::OK,
            headers,
            (!head).then(|| cached.body.clone()),
        );
    }
    let p = plan_with(
        req.method(),
        req.headers(),
        &cached.meta,
        &cached.validators,
    );
    let body = match p.body {
        _ if head => None,
        BodyPlan::Empty => None,
        BodyPlan::Full => Some(cached.body.clone()),
        BodyPlan::Range { start, end } => Some(cached.body.slice(start as usize..end as usize)),
    };
    respond(p.status, p.headers, body)
}

/// Resolves `rel` beneath the root: the open file, or the answer (a redirect, an error).
// The error is an answer to send, built once and moved once: not worth a box.
#[allow(clippy::result_large_err)]
fn open(root: &DocRoot, rel: RelPath) -> Result<OpenFile, Response<Body>> {
    match root.resolve_rel(rel) {
        Ok(Resolved::File(f)) => Ok(f),
        Ok(Resolved::Redirect(loc)) => {
            let mut r = simple(StatusCode::MOVED_PERMANENTLY, "moved");
            if let Ok(v) = HeaderValue::from_str(&loc) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            Err(r)
        }
        Err(e) => Err(simple(e.status(), &e.to_string())),
    }
}

/// Reads a small file whole into a cache entry, with its plain 200's headers built once.
#[allow(clippy::result_large_err)]
fn cache_file(file: OpenFile, now: Instant) -> Result<Arc<CachedFile>, Response<Body>> {
    let body = read_range(&file.file, 0, file.meta.len)
        .map_err(|e| simple(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))?;
    let validators = Validators::of(&file.meta);
    let plain = plan_with(&Method::GET, &HeaderMap::new(), &file.meta, &validators).headers;
    Ok(Arc::new(CachedFile {
        validators,
        plain,
        meta: file.meta,
        body,
        checked: now,
    }))
}

/// A plain 200's headers for `file`, written into `map` (the request's, emptied).
///
/// hyper keeps each response's header map, drained, for the next request's head, and the
/// request's map was dropped with the request: so the map goes round a connection's requests
/// and a plain 200 allocates none. Cloning the entry's map instead cost two allocations and
/// two frees per request (perf, keep-alive: about 0.12 µs of a request's 2.9 µs of user time).
fn plain_headers(file: &CachedFile, mut map: HeaderMap) -> HeaderMap {
    map.clear();
    for (name, value) in &file.plain {
        map.append(name.clone(), value.clone());
    }
    map
}

fn respond(status: StatusCode, headers: HeaderMap, body: Option<Bytes>) -> Response<Body> {
    let mut r = Response::new(Body::Full(body));
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    r
}

/// A file too large for the cache: streamed, a chunk at a time (see [`FileBody`]).
fn serve_open_file<B>(file: OpenFile, req: &Request<B>) -> Response<Body> {
    let ResponsePlan {
        status,
        headers,
        body,
    } = plan(req.method(), req.headers(), &file.meta);
    let (start, end) = match body {
        _ if req.method() == Method::HEAD => (0, 0),
        BodyPlan::Empty => (0, 0),
        BodyPlan::Full => (0, file.meta.len),
        BodyPlan::Range { start, end } => (start, end),
    };
    let mut r = Response::new(Body::File(FileBody {
        file: file.file,
        pos: start,
        end,
    }));
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    r
}

/// How much of a large file one frame carries: 256 KiB downloads a 300 MB file at 2.3-2.7
/// GB/s on loopback, 64 KiB at 1.6-2.1, reading it whole at 1.9-2.6.
pub(crate) const FILE_CHUNK: usize = 256 * 1024;

/// A large file's body, read a chunk at a time as the connection takes it: hyper asks for the
/// next frame only when its write buffer has room, so a download holds a few chunks of memory
/// however large the file and however slow the client (it used to be read whole: four
/// downloads of a 300 MB file took the server to 1.2 GB, now 24 MB), and a worker reads one
/// chunk per poll instead of the whole file while its other connections wait. The reads are
/// charged to the connection's poll, like the copies they feed. A file that shrinks under the
/// download ends the body with an error, so the client sees a cut response, not a complete one.
pub(crate) struct FileBody {
    pub(crate) file: std::fs::File,
    pub(crate) pos: u64,
    pub(crate) end: u64,
}

impl FileBody {
    /// The next chunk: `None` at the end.
    pub(crate) fn next_chunk(&mut self) -> Option<std::io::Result<Bytes>> {
        use std::os::unix::fs::FileExt;
        if self.pos >= self.end {
            return None;
        }
        let want = (self.end - self.pos).min(FILE_CHUNK as u64) as usize;
        let mut buf = vec![0u8; want];
        if let Err(e) = self.file.read_exact_at(&mut buf, self.pos) {
            // An error, or the end before the promised length: stop for good.
            self.end = self.pos;
            return Some(Err(if e.kind() == std::io::ErrorKind::UnexpectedEof {
                std::io::Error::new(e.kind(), "the file shrank while it was being sent")
            } else {
                e
            }));
        }
        self.pos += want as u64;
        Some(Ok(Bytes::from(buf)))
    }

    pub(crate) fn remaining(&self) -> u64 {
        self.end.saturating_sub(self.pos)
    }
}

/// Reads `start..end` of a file (buffered: measured faster than sendfile for the small files
/// a web site is mostly made of, and it keeps the CPU of the copy in the connection's poll).
fn read_range(f: &std::fs::File, start: u64, end: u64) -> std::io::Result<Bytes> {
    let mut f = f;
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::with_capacity((end - start) as usize);
    f.take(end - start).read_to_end(&mut buf)?;
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_body(data: &[u8], pos: u64, end: u64) -> (tempfile::NamedTempFile, FileBody) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(data).unwrap();
        let file = std::fs::File::open(f.path()).unwrap();
        (f, FileBody { file, pos, end })
    }

    /// Reads a body to its end, checking the size it announces as it goes.
    fn frames(mut b: FileBody) -> Vec<Result<Bytes, std::io::Error>> {
        let mut out = Vec::new();
        loop {
            let before = b.remaining();
            match b.next_chunk() {
                Some(Ok(d)) => {
                    assert_eq!(before - d.len() as u64, b.remaining());
                    out.push(Ok(d));
                }
                Some(Err(e)) => out.push(Err(e)),
                None => return out,
            }
        }
    }

    #[test]
    fn a_large_file_goes_out_in_chunks_of_its_range() {
        let data: Vec<u8> = (0..3 * FILE_CHUNK + 100).map(|i| (i % 251) as u8).collect();
        let (_f, b) = file_body(&data, 0, data.len() as u64);
        let got = frames(b);
        let sizes: Vec<usize> = got.iter().map(|c| c.as_ref().unwrap().len()).collect();
        assert_eq!(sizes, [FILE_CHUNK, FILE_CHUNK, FILE_CHUNK, 100]);
        let all: Vec<u8> = got.into_iter().flat_map(|c| c.unwrap()).collect();
        assert_eq!(all, data);
        // A range across a chunk boundary: exactly its bytes.
        let (start, end) = (FILE_CHUNK as u64 - 10, FILE_CHUNK as u64 + 20);
        let (_f, b) = file_body(&data, start, end);
        let all: Vec<u8> = frames(b).into_iter().flat_map(|c| c.unwrap()).collect();
        assert_eq!(all, &data[start as usize..end as usize]);
        // Nothing to send: ends at once.
        let (_f, b) = file_body(&data, 0, 0);
        assert_eq!(b.remaining(), 0);
        assert!(frames(b).is_empty());
    }

    #[test]
    fn a_file_that_shrinks_under_its_download_cuts_the_body() {
        let data = vec![7u8; 2 * FILE_CHUNK];
        let (f, b) = file_body(&data, 0, data.len() as u64);
        f.as_file().set_len(FILE_CHUNK as u64 + 5).unwrap();
        let got = frames(b);
        assert_eq!(got.len(), 2, "the whole first chunk, then the error");
        assert_eq!(got[0].as_ref().unwrap().len(), FILE_CHUNK);
        let e = got[1].as_ref().unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
    }

    #[test]
    fn a_plain_200_carries_the_entry_s_headers_and_none_of_the_request_s() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x.txt"), "hello").unwrap();
        let root = DocRoot::open(dir.path(), vec!["index.html".into()]).unwrap();
        let cache = FileCache::default();
        let now = Instant::now();
        let rel = crate::static_files::normalize("/x.txt").unwrap();
        let mut req = Request::get("/x.txt")
            .header(header::USER_AGENT, "t")
            .header(header::ACCEPT, "*/*")
            .body(())
            .unwrap();
        let first = serve(&root, &cache, &mut req, StaticTarget::Path(rel), now);
        let hit = cache.get("/x.txt", now).expect("cached");
        let mut req = Request::get("/x.txt")
            .header(header::USER_AGENT, "t")
            .header(header::HOST, "h")
            .body(())
            .unwrap();
        let again = serve(
            &root,
            &cache,
            &mut req,
            StaticTarget::Cached(hit.clone()),
            now,
        );
        for r in [&first, &again] {
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers(), &hit.plain);
            assert!(!r.headers().contains_key(header::USER_AGENT));
        }
        let names: Vec<_> = again.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "etag",
                "last-modified",
                "content-type",
                "accept-ranges",
                "content-length"
            ]
        );
    }

    #[test]
    fn a_small_file_is_cached_and_served_from_memory_with_its_validators() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x.txt"), "hello").unwrap();
        let root = DocRoot::open(dir.path(), vec!["index.html".into()]).unwrap();
        let cache = FileCache::default();
        let now = Instant::now();
        let get = |uri: &str| Request::get(uri).body(()).unwrap();
        let rel = crate::static_files::normalize("/x.txt").unwrap();
        let r = serve(
            &root,
            &cache,
            &mut get("/x.txt"),
            StaticTarget::Path(rel),
            now,
        );
        assert_eq!(r.status(), 200);
        let etag = r.headers()[header::ETAG].clone();
        assert!(matches!(r.body(), Body::Full(Some(b)) if b == "hello"));
        // The file goes; the cache answers until its entry expires.
        std::fs::remove_file(dir.path().join("x.txt")).unwrap();
        let hit = cache.get("/x.txt", now).expect("cached");
        let mut cond = get("/x.txt");
        cond.headers_mut().insert(header::IF_NONE_MATCH, etag);
        let r = serve(&root, &cache, &mut cond, StaticTarget::Cached(hit), now);
        assert_eq!(r.status(), 304);
        assert!(cache.get("/x.txt", now + CACHE_VALID).is_none(), "expired");
        // Resolved again, it is gone.
        let rel = crate::static_files::normalize("/x.txt").unwrap();
        let r = serve(
            &root,
            &cache,
            &mut get("/x.txt"),
            StaticTarget::Path(rel),
            now,
        );
        assert_eq!(r.status(), 404);
    }
}
