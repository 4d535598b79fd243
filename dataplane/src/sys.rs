//! Every `unsafe` call of the data plane, each behind a safe function: the only module where
//! `unsafe_code` is allowed.

/// Returns free heap memory to the system; a no-op off glibc.
pub(crate) fn malloc_trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and only walks glibc's own arenas under their locks;
    // it may be called from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The kernel's `TCP_INFO` for a TCP socket, or `None` if it cannot be read.
pub(crate) fn tcp_info(s: &impl std::os::fd::AsRawFd) -> Option<libc::tcp_info> {
    // SAFETY: `tcp_info` is plain integers, for which all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` and `len` are valid for writes, and `len` is `info`'s size, so the kernel
    // writes at most that much.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(info)
}
