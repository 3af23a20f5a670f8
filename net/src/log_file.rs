//! The raft log file on a real disk: `<data-dir>/member/detcd.wal`, or `<wal-dir>/detcd.wal`.

use detcd_core::wal::LogFile;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub struct FileLog {
    path: PathBuf,
    file: Option<File>,
    /// Where the next append goes.
    len: u64,
}

impl FileLog {
    /// A log file at `path`, created by the first `replace` if it does not exist yet.
    pub fn open(path: &Path) -> io::Result<FileLog> {
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let len = match &file {
            Some(f) => f.metadata()?.len(),
            None => 0,
        };
        Ok(FileLog {
            path: path.to_path_buf(),
            file,
            len,
        })
    }

    fn file(&self) -> io::Result<&File> {
        self.file
            .as_ref()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "raft log file not created"))
    }
}

impl LogFile for FileLog {
    fn read_all(&mut self) -> io::Result<Vec<u8>> {
        match &self.file {
            Some(_) => std::fs::read(&self.path),
            None => Ok(Vec::new()),
        }
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file()?.write_all_at(bytes, self.len)?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file()?.sync_data()
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        let f = self.file()?;
        f.set_len(len)?;
        f.sync_all()?;
        self.len = len;
        Ok(())
    }

    fn replace(&mut self, bytes: &[u8]) -> io::Result<()> {
        let tmp = self.path.with_extension("wal.tmp");
        {
            let f = File::create(&tmp)?;
            f.write_all_at(bytes, 0)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        // The rename itself must survive a crash.
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        self.file = Some(OpenOptions::new().read(true).write(true).open(&self.path)?);
        self.len = bytes.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_replace_and_truncate_reach_the_file() {
        let dir = std::env::temp_dir().join(format!("detcd-log-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("detcd.wal");
        let mut f = FileLog::open(&path).unwrap();
        assert!(f.read_all().unwrap().is_empty());
        assert!(f.append(b"x").is_err(), "append before the file exists");
        f.replace(b"head").unwrap();
        f.append(b"-one").unwrap();
        f.sync().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"head-one");
        let mut again = FileLog::open(&path).unwrap();
        again.append(b"-two").unwrap();
        again.truncate(6).unwrap();
        again.append(b"ne").unwrap();
        assert_eq!(again.read_all().unwrap(), b"head-one");
        again.replace(b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert!(!path.with_extension("wal.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
