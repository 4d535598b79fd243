//! The harness's own target server: the first byte of a connection picks its behaviour.
//! `E`: echo everything back. `S`: sink everything, then answer the byte count (u64 BE).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

/// Starts the server on a free loopback port; it runs until the process exits.
pub fn start() -> std::io::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || serve(conn));
        }
    });
    Ok(port)
}

fn serve(mut c: TcpStream) {
    let _ = c.set_nodelay(true);
    let mut mode = [0u8; 1];
    if c.read_exact(&mut mode).is_err() {
        return;
    }
    let mut buf = vec![0u8; 256 * 1024];
    match mode[0] {
        b'E' => loop {
            match c.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if c.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        },
        b'S' => {
            let mut total = 0u64;
            loop {
                match c.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => total += n as u64,
                    Err(_) => return,
                }
            }
            let _ = c.write_all(&total.to_be_bytes());
        }
        _ => {}
    }
}
