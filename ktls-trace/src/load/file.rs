//! The file the server serves: a user's file, or a generated one with a fixed pattern in a
//! temporary directory that is removed when the [`ServedFile`] is dropped.

use std::{
    fs::{self, File},
    io::{self, BufWriter, Read, Write},
    path::{Path, PathBuf},
};

use ring::digest;

use super::error::{LoadError, io_reason};

/// A SHA-256 digest.
pub type Sha256 = [u8; 32];

pub fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn parse_hex_sha256(s: &str) -> Option<Sha256> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The generated content: xorshift64* words, little endian, from a fixed seed. Not
/// compressible, cheap to make, and the same everywhere (so a client can check a
/// generated file without having it).
pub struct Pattern {
    state: u64,
    pending: [u8; 8],
    used: usize,
}

impl Default for Pattern {
    fn default() -> Self {
        Pattern {
            state: 0x6b74_6c73_2d74_7261, // "ktls-tra"
            pending: [0; 8],
            used: 8,
        }
    }
}

impl Pattern {
    fn next_word(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Fills `buf` with the next bytes of the pattern.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut i = 0;
        while i < buf.len() && self.used < 8 {
            buf[i] = self.pending[self.used];
            self.used += 1;
            i += 1;
        }
        let mut chunks = buf[i..].chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_word().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            self.pending = self.next_word().to_le_bytes();
            let n = rest.len();
            rest.copy_from_slice(&self.pending[..n]);
            self.used = n;
        }
    }
}

/// SHA-256 of the first `size` bytes of the generated pattern (what a generated file of
/// that size contains).
pub fn pattern_sha256(size: u64) -> Sha256 {
    let no_sink: io::Result<Sha256> = stream_pattern(size, |_| Ok(()));
    // The sink never fails.
    no_sink.unwrap_or_default()
}

/// Streams `size` bytes of the pattern, 1 MiB at a time, into `sink`, and returns their
/// SHA-256.
fn stream_pattern(size: u64, mut sink: impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<Sha256> {
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut pat = Pattern::default();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        pat.fill(&mut buf[..n]);
        ctx.update(&buf[..n]);
        sink(&buf[..n])?;
        left -= n as u64;
    }
    Ok(finish(ctx))
}

pub fn finish(ctx: digest::Context) -> Sha256 {
    let d = ctx.finish();
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The served file, open for sendfile(2), with its size and content hash.
#[derive(Debug)]
pub struct ServedFile {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: Sha256,
    pub generated: bool,
    file: File,
    /// The generated file's directory, removed when this drops (held for its `Drop`).
    #[cfg_attr(not(test), allow(dead_code))]
    temp_dir: Option<TempDir>,
}

impl ServedFile {
    /// Opens a user's file and hashes it (which also brings it into the page cache).
    pub fn open(path: &Path) -> Result<ServedFile, LoadError> {
        let (file, size, sha256) = hash_file(path, "--file")?;
        Ok(ServedFile {
            path: path.to_path_buf(),
            size,
            sha256,
            generated: false,
            file,
            temp_dir: None,
        })
    }

    /// Writes `size` bytes of the pattern into a fresh temporary directory.
    pub fn generate(size: u64) -> Result<ServedFile, LoadError> {
        let dir = TempDir::create()?;
        let path = dir.path.join(format!("payload-{size}.bin"));
        // Refuse before writing: a file that fills /tmp (often RAM) hurts the machine,
        // and would fail half-way anyway. A tenth of what is free stays free.
        if let Ok(free) = free_bytes(&dir.path)
            && size > free - free / 10
        {
            return Err(LoadError::Usage(format!(
                "--file-size {size} does not fit in {}: {free} bytes are free there (at most 90% may be used)",
                dir.path.display()
            )));
        }
        let write = || -> io::Result<Sha256> {
            let mut out = BufWriter::with_capacity(1 << 20, File::create(&path)?);
            let sha256 = stream_pattern(size, |chunk| out.write_all(chunk))?;
            out.into_inner().map_err(|e| e.into_error())?.sync_data()?;
            Ok(sha256)
        };
        let sha256 = write().map_err(|e| {
            LoadError::Generate(format!("writing {}: {}", path.display(), io_reason(&e)))
        })?;
        let file = File::open(&path).map_err(|e| {
            LoadError::Generate(format!("reopening {}: {}", path.display(), io_reason(&e)))
        })?;
        Ok(ServedFile {
            path,
            size,
            sha256,
            generated: true,
            file,
            temp_dir: Some(dir),
        })
    }

    /// The open file (for sendfile: each call passes its own offset, so connections can
    /// share it).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The temporary directory of a generated file.
    #[cfg(test)]
    pub fn temp_dir(&self) -> Option<&Path> {
        self.temp_dir.as_ref().map(|d| d.path.as_path())
    }
}

/// Bytes an unprivileged writer may still use on the filesystem of `dir`.
fn free_bytes(dir: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs only writes the struct it is given; `c` is a NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; both pointers are valid for the call.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // fsblkcnt_t and c_ulong are 32 bits wide on some targets.
    #[allow(clippy::useless_conversion)]
    let (blocks, size) = (u64::from(st.f_bavail), u64::from(st.f_frsize));
    Ok(blocks.saturating_mul(size))
}

/// Opens `path`, checks it is a regular file, and returns it with its size and SHA-256.
pub fn hash_file(path: &Path, what: &'static str) -> Result<(File, u64, Sha256), LoadError> {
    // Checked before opening: opening a FIFO blocks until a writer comes, and a device
    // or a directory is no file to serve.
    let meta = fs::metadata(path).map_err(|e| LoadError::read(what, path, &e))?;
    if !meta.is_file() {
        return Err(LoadError::Read {
            what,
            path: path.display().to_string(),
            reason: "not a regular file".into(),
        });
    }
    let mut file = File::open(path).map_err(|e| LoadError::read(what, path, &e))?;
    let meta = file
        .metadata()
        .map_err(|e| LoadError::read(what, path, &e))?;
    if !meta.is_file() {
        return Err(LoadError::Read {
            what,
            path: path.display().to_string(),
            reason: "not a regular file".into(),
        });
    }
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(LoadError::read(what, path, &e)),
        };
        ctx.update(&buf[..n]);
        size += n as u64;
    }
    Ok((file, size, finish(ctx)))
}

/// A private directory removed (with its content) on drop.
#[derive(Debug)]
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn create() -> Result<TempDir, LoadError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!("ktls-trace-load-{}-{nanos:08x}", std::process::id());
        // Minimal systems (e.g. an initramfs) may lack /tmp.
        let bases = [
            std::env::temp_dir(),
            PathBuf::from("/dev/shm"),
            PathBuf::from("/run"),
            PathBuf::from("."),
        ];
        let mut first_err = None;
        for base in bases {
            let path = base.join(&name);
            let mut builder = fs::DirBuilder::new();
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            match builder.create(&path) {
                Ok(()) => return Ok(TempDir { path }),
                Err(e) => {
                    first_err.get_or_insert_with(|| {
                        format!("creating {}: {}", path.display(), io_reason(&e))
                    });
                }
            }
        }
        Err(LoadError::Generate(first_err.unwrap_or_default()))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            log::warn!(
                "could not remove {}: {}",
                self.path.display(),
                io_reason(&e)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_the_same_whatever_the_chunking() {
        let mut a = vec![0u8; 1000];
        Pattern::default().fill(&mut a);
        let mut b = vec![0u8; 1000];
        let mut p = Pattern::default();
        let mut off = 0;
        for n in [1, 2, 3, 5, 7, 8, 9, 13, 100, 852] {
            p.fill(&mut b[off..off + n]);
            off += n;
        }
        assert_eq!(off, 1000);
        assert_eq!(a, b);
        assert_ne!(a[..8], a[8..16]);
    }

    #[test]
    fn generated_file_matches_pattern_hash_and_is_removed() {
        let size = 3 * 1024 * 1024 + 17;
        let f = ServedFile::generate(size).unwrap();
        assert_eq!(f.size, size);
        assert_eq!(std::fs::metadata(&f.path).unwrap().len(), size);
        assert_eq!(f.sha256, pattern_sha256(size));
        let (_, n, h) = hash_file(&f.path, "--file").unwrap();
        assert_eq!((n, h), (size, f.sha256));
        let dir = f.temp_dir().unwrap().to_path_buf();
        drop(f);
        assert!(!dir.exists());
    }

    #[test]
    fn a_file_larger_than_the_free_space_is_refused_before_writing() {
        let e = ServedFile::generate(1 << 60).unwrap_err().to_string();
        assert!(e.contains("does not fit in"), "{e}");
        assert!(e.contains("bytes are free there"), "{e}");
    }

    /// A FIFO would block open() until a writer came: refused at once instead.
    #[test]
    fn a_fifo_is_not_served() {
        use std::os::unix::ffi::OsStrExt as _;
        let dir = TempDir::create().unwrap();
        let fifo = dir.path.join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path; mkfifo only creates the node.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = ServedFile::open(&fifo).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }

    #[test]
    fn hex_round_trip() {
        let h = pattern_sha256(10);
        assert_eq!(parse_hex_sha256(&hex(&h)), Some(h));
        assert_eq!(parse_hex_sha256("zz"), None);
        // Empty input: the well-known SHA-256 of nothing.
        assert_eq!(
            hex(&pattern_sha256(0)),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn directories_and_missing_files_are_refused() {
        let e = ServedFile::open(Path::new("/")).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let e = ServedFile::open(Path::new("/nonexistent/x"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "cannot read --file /nonexistent/x: no such file or directory"
        );
    }
}
