//! The part of getrandom 0.2's API that this workspace's dependencies use (rand_core 0.6),
//! filled from libc's `getrandom(3)` so madsim can make it deterministic.

use core::fmt;
use core::num::NonZeroU32;

#[derive(Copy, Clone, Eq, PartialEq)]
pub struct Error(NonZeroU32);

impl Error {
    pub const UNSUPPORTED: Error = Error::internal(0);
    pub const ERRNO_NOT_POSITIVE: Error = Error::internal(1);
    pub const UNEXPECTED: Error = Error::internal(2);
    pub const INTERNAL_START: u32 = 1 << 31;
    pub const CUSTOM_START: u32 = (1 << 31) + (1 << 30);

    const fn internal(n: u16) -> Error {
        match NonZeroU32::new(Self::INTERNAL_START + n as u32) {
            Some(c) => Error(c),
            None => panic!("internal error codes are non-zero"),
        }
    }

    pub fn raw_os_error(self) -> Option<i32> {
        if self.0.get() < Self::INTERNAL_START {
            Some(self.0.get() as i32)
        } else {
            None
        }
    }

    pub const fn code(self) -> NonZeroU32 {
        self.0
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Error {{ code: {} }}", self.0)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.raw_os_error() {
            Some(errno) => write!(f, "getrandom: OS error {errno}"),
            None => write!(f, "getrandom: error code {}", self.0),
        }
    }
}

impl From<NonZeroU32> for Error {
    fn from(code: NonZeroU32) -> Self {
        Error(code)
    }
}

impl std::error::Error for Error {}

/// Fills `dest` with random bytes from libc's getrandom(3), retrying on EINTR and short reads.
pub fn getrandom(dest: &mut [u8]) -> Result<(), Error> {
    let mut filled = 0;
    while filled < dest.len() {
        let rest = &mut dest[filled..];
        // SAFETY: the pointer and length describe the unfilled tail of `dest`.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n > 0 {
            filled += n as usize;
            continue;
        }
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        if n < 0 && errno == libc::EINTR {
            continue;
        }
        return Err(match NonZeroU32::new(errno as u32) {
            Some(c) if (c.get()) < Error::INTERNAL_START => Error(c),
            _ => Error::ERRNO_NOT_POSITIVE,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn fills_the_buffer() {
        let mut a = [0u8; 64];
        let mut b = [0u8; 64];
        super::getrandom(&mut a).unwrap();
        super::getrandom(&mut b).unwrap();
        assert_ne!(a, b, "two 64-byte draws should differ");
    }
}
