//! Directory events (Linux inotify), so a delivered file is read without waiting for the
//! next poll.
//!
//! A file renamed into the directory (`IN_MOVED_TO`, the way SFTP servers and careful
//! writers deliver a finished file) is complete the moment it appears, so it is read at
//! once, without the two-poll stability check. A file closed after writing
//! (`IN_CLOSE_WRITE`) or created wakes the reader, which still checks that it is stable.
//! Where inotify is not available (network mounts do not report remote writes, other
//! systems, exhausted watch limits) the reader polls as before: the watcher only ever
//! makes it earlier.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

#[derive(Default)]
struct Shared {
    wake: Notify,
    /// Names renamed into the directory since the reader last asked.
    renamed: Mutex<HashSet<String>>,
    stop: AtomicBool,
}

/// Watches one directory until dropped.
pub struct Watcher {
    shared: Arc<Shared>,
}

impl Watcher {
    /// Starts watching `dir`; `None` when inotify cannot watch it (the reader then polls).
    pub fn start(dir: &Path) -> Option<Watcher> {
        let shared = Arc::new(Shared::default());
        let fd = sys::watch(dir)?;
        let s = shared.clone();
        std::thread::Builder::new()
            .name("posix_fs-watch".into())
            .spawn(move || {
                sys::read_events(fd, &s.stop, |mask, name| {
                    if mask & sys::MOVED_TO != 0 {
                        s.renamed
                            .lock()
                            .expect("watch lock")
                            .insert(name.to_string());
                    }
                    s.wake.notify_one();
                });
            })
            .ok()?;
        Some(Watcher { shared })
    }

    /// The names renamed into the directory since the last call.
    pub fn take_renamed(&self) -> HashSet<String> {
        std::mem::take(&mut *self.shared.renamed.lock().expect("watch lock"))
    }

    /// Sleeps for `poll`, or less if the directory changes.
    pub async fn wait(&self, poll: Duration) {
        tokio::select! {
            _ = self.shared.wake.notified() => {}
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        // The thread sees this within its poll timeout, then closes the descriptor.
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

/// Sleeps for `poll`, or until the watcher (if any) sees a change.
pub async fn wait(w: Option<&Watcher>, poll: Duration) {
    match w {
        Some(w) => w.wait(poll).await,
        None => tokio::time::sleep(poll).await,
    }
}

#[cfg(target_os = "linux")]
mod sys {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, Ordering};

    pub const MOVED_TO: u32 = libc::IN_MOVED_TO;

    /// An inotify descriptor watching `dir` for finished and arriving files.
    pub fn watch(dir: &Path) -> Option<i32> {
        let path = CString::new(dir.as_os_str().as_bytes()).ok()?;
        // SAFETY: plain system calls; `path` is a valid NUL-terminated string that
        // outlives the call, and the descriptor is closed on every failure path.
        unsafe {
            let fd = libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK);
            if fd < 0 {
                return None;
            }
            let mask = libc::IN_MOVED_TO | libc::IN_CLOSE_WRITE | libc::IN_CREATE;
            if libc::inotify_add_watch(fd, path.as_ptr(), mask) < 0 {
                libc::close(fd);
                return None;
            }
            Some(fd)
        }
    }

    /// Reads events until `stop`, calling `on` with each event's mask and file name;
    /// closes the descriptor.
    pub fn read_events(fd: i32, stop: &AtomicBool, mut on: impl FnMut(u32, &str)) {
        // Room for many events (each is 16 bytes plus a NUL-padded name).
        let mut buf = vec![0u8; 64 * 1024];
        while !stop.load(Ordering::Relaxed) {
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: `pfd` is a valid pollfd for the duration of the call.
            let ready = unsafe { libc::poll(&mut pfd, 1, 250) };
            if ready <= 0 {
                continue; // timeout (check `stop`) or EINTR
            }
            // SAFETY: `buf` is valid for writes of its length.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                continue; // EAGAIN after a spurious wake-up
            }
            let mut at = 0usize;
            let n = n as usize;
            // struct inotify_event { int wd; uint32_t mask, cookie, len; char name[]; }
            while at + 16 <= n {
                let word = |i: usize| {
                    u32::from_ne_bytes(buf[at + i..at + i + 4].try_into().expect("4 bytes"))
                };
                let (mask, len) = (word(4), word(12) as usize);
                let name_end = (at + 16 + len).min(n);
                let raw = &buf[at + 16..name_end];
                let raw = &raw[..raw.iter().position(|&b| b == 0).unwrap_or(raw.len())];
                if let Ok(name) = std::str::from_utf8(raw) {
                    on(mask, name);
                }
                at += 16 + len;
            }
        }
        // SAFETY: `fd` is ours and closed once.
        unsafe {
            libc::close(fd);
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod sys {
    use std::path::Path;
    use std::sync::atomic::AtomicBool;

    pub const MOVED_TO: u32 = 0;

    pub fn watch(_dir: &Path) -> Option<i32> {
        None
    }

    pub fn read_events(_fd: i32, _stop: &AtomicBool, _on: impl FnMut(u32, &str)) {}
}
