//! Many datagrams per system call, where Linux allows it. Sending: UDP generic segmentation
//! offload (`UDP_SEGMENT`, Linux 4.18). A connection's data packets are all the same size but
//! the last, so a run of them goes to the kernel in one `sendmsg` and is cut apart below the
//! socket layer: one system call and one pass through the IP stack for up to 64 datagrams,
//! where a `sendto` each cost the seed more than half its CPU over uTP. The peer receives
//! ordinary datagrams. Where the kernel or the route refuses it, sending falls back to one
//! datagram a call, for good. Receiving: `recvmmsg` takes up to 64 datagrams a call.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Datagrams in one segmented send: the kernel's `UDP_MAX_SEGMENTS`.
const MAX_SEGMENTS: usize = 64;
/// Bytes in one segmented send: it must fit one IP datagram.
const MAX_BYTES: usize = 65_000;

pub struct Sender {
    segmenting: AtomicBool,
}

impl Sender {
    pub fn new() -> Sender {
        Sender {
            segmenting: AtomicBool::new(cfg!(target_os = "linux")),
        }
    }

    /// Sends `datagrams` to `addr` in order; returns how many went out. It stops at the first
    /// that the socket's full buffer would block (the caller keeps the rest for later); other
    /// errors (an unreachable peer reported by ICMP) count the datagram as sent, since uTP
    /// resends what is lost.
    pub fn send(&self, udp: &UdpSocket, addr: SocketAddr, datagrams: &[Vec<u8>]) -> usize {
        let mut sent = 0;
        while sent < datagrams.len() {
            let run = self.run_at(&datagrams[sent..]);
            let result = if run > 1 {
                let segment = datagrams[sent].len();
                match send_segmented(udp, addr, &datagrams[sent..sent + run], segment) {
                    Err(e) if refused(&e) => {
                        tracing::debug!("uTP: segmented UDP sends refused ({e}); one datagram a call from now on");
                        self.segmenting.store(false, Ordering::Relaxed);
                        continue;
                    }
                    other => other.map(|()| run),
                }
            } else {
                udp.try_send_to(&datagrams[sent], addr).map(|_| 1)
            };
            match result {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!("uTP send to {addr}: {e}");
                    sent += run.max(1);
                }
            }
        }
        sent
    }

    /// How many datagrams from the front can go in one segmented send: the same size as
    /// the first, except the last, which may be shorter.
    fn run_at(&self, datagrams: &[Vec<u8>]) -> usize {
        if !self.segmenting.load(Ordering::Relaxed) || datagrams.len() < 2 {
            return 1;
        }
        let segment = datagrams[0].len();
        let mut run = 1;
        let mut bytes = segment;
        for next in &datagrams[1..] {
            if run == MAX_SEGMENTS || bytes + next.len() > MAX_BYTES || next.len() > segment {
                break;
            }
            run += 1;
            bytes += next.len();
            if next.len() < segment {
                break;
            }
        }
        run
    }
}

/// Datagrams taken from the socket in one `recvmmsg`.
pub const RECEIVE_BATCH: usize = 64;
/// Room for any UDP datagram (65,507 bytes of payload at most).
const SLOT: usize = 65_536;

/// Buffers for one `recvmmsg` of up to [`RECEIVE_BATCH`] datagrams. They are 4 MiB of
/// address space, but the kernel writes only the bytes that arrive, so only the pages that
/// datagrams reach become memory.
pub struct Receiver {
    buffers: Vec<u8>,
    names: Vec<libc::sockaddr_storage>,
    lengths: Vec<usize>,
    received: usize,
}

impl Receiver {
    pub fn new() -> Receiver {
        Receiver {
            buffers: vec![0; RECEIVE_BATCH * SLOT],
            // SAFETY: sockaddr_storage is plain data; all zeroes is a valid value.
            names: vec![unsafe { std::mem::zeroed() }; RECEIVE_BATCH],
            lengths: vec![0; RECEIVE_BATCH],
            received: 0,
        }
    }

    /// Takes the datagrams waiting on `udp`, up to [`RECEIVE_BATCH`]; returns how many.
    /// `WouldBlock` when there are none (and the socket's readiness is cleared).
    pub fn receive(&mut self, udp: &UdpSocket) -> io::Result<usize> {
        self.received = 0;
        let mut iov: Vec<libc::iovec> = self
            .buffers
            .chunks_exact_mut(SLOT)
            .map(|slot| libc::iovec {
                iov_base: slot.as_mut_ptr().cast(),
                iov_len: SLOT,
            })
            .collect();
        // SAFETY: mmsghdr is plain data; each header points at its own iovec and name, which
        // outlive the call, and the kernel writes at most iov_len and msg_namelen bytes.
        let mut headers: Vec<libc::mmsghdr> = iov
            .iter_mut()
            .zip(self.names.iter_mut())
            .map(|(iov, name)| {
                let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
                header.msg_hdr.msg_iov = iov;
                header.msg_hdr.msg_iovlen = 1;
                header.msg_hdr.msg_name = (name as *mut libc::sockaddr_storage).cast();
                header.msg_hdr.msg_namelen =
                    std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                header
            })
            .collect();
        let n = udp.try_io(Interest::READABLE, || {
            // SAFETY: as above; `headers` has RECEIVE_BATCH entries.
            let n = unsafe {
                libc::recvmmsg(
                    udp.as_raw_fd(),
                    headers.as_mut_ptr(),
                    RECEIVE_BATCH as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        })?;
        for (length, header) in self.lengths.iter_mut().zip(&headers[..n]) {
            *length = header.msg_len as usize;
        }
        self.received = n;
        Ok(n)
    }

    /// The `i`th datagram of the last [`Receiver::receive`] and its sender (`None` for a
    /// sender address that is neither IPv4 nor IPv6).
    pub fn datagram(&self, i: usize) -> (&[u8], Option<SocketAddr>) {
        assert!(i < self.received);
        let bytes = &self.buffers[i * SLOT..i * SLOT + self.lengths[i]];
        (bytes, socket_addr(&self.names[i]))
    }
}

/// The errors of a kernel without `UDP_SEGMENT`, or of a route whose device cannot segment.
fn refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EIO | libc::ENOPROTOOPT | libc::EOPNOTSUPP)
    )
}

/// One `sendmsg` of `datagrams` (each `segment` bytes, the last maybe fewer) with a
/// `UDP_SEGMENT` control message.
fn send_segmented(
    udp: &UdpSocket,
    addr: SocketAddr,
    datagrams: &[Vec<u8>],
    segment: usize,
) -> io::Result<()> {
    let iov: Vec<libc::iovec> = datagrams
        .iter()
        .map(|d| libc::iovec {
            iov_base: d.as_ptr() as *mut libc::c_void,
            iov_len: d.len(),
        })
        .collect();
    let (mut name, name_len) = sockaddr(addr);
    // u64s, so the buffer has cmsghdr's alignment; CMSG_SPACE(2) is 24 bytes.
    let mut control = [0u64; 4];
    // SAFETY: msghdr is plain data; every pointer set below outlives the sendmsg calls, and
    // the control message is written inside `control`, whose length CMSG_SPACE covers.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = name_len;
        msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = iov.len() as _;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(2) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_UDP;
        (*cmsg).cmsg_type = libc::UDP_SEGMENT;
        (*cmsg).cmsg_len = libc::CMSG_LEN(2) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment as u16);
        udp.try_io(Interest::WRITABLE, || {
            if libc::sendmsg(udp.as_raw_fd(), &msg, 0) < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        })
    }
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data, large and aligned enough for either family.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    let ptr = (storage as *const libc::sockaddr_storage).cast::<u8>();
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in here, as ss_family says.
            let sin = unsafe { std::ptr::read_unaligned(ptr.cast::<libc::sockaddr_in>()) };
            let ip = std::net::Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::from((ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6 here, as ss_family says.
            let sin6 = unsafe { std::ptr::read_unaligned(ptr.cast::<libc::sockaddr_in6>()) };
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                sin6.sin6_addr.s6_addr.into(),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_segmented_send_arrives_as_the_datagrams_it_was_made_of() {
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // 52 datagrams, well within the receiver's default buffer: runs of 47, 3 (the last
        // shorter) and 2.
        let datagrams: Vec<Vec<u8>> = (0..50u8)
            .map(|i| vec![i; if i == 49 { 100 } else { 1382 }])
            .chain([vec![7u8; 20], vec![8u8; 20]])
            .collect();
        let sender = Sender::new();
        assert_eq!(sender.run_at(&datagrams), MAX_BYTES / 1382);
        a.writable().await.unwrap();
        let sent = sender.send(&a, b.local_addr().unwrap(), &datagrams);
        assert_eq!(sent, datagrams.len());
        let mut buf = vec![0u8; 65536];
        for expected in &datagrams {
            let (n, from) = b.recv_from(&mut buf).await.unwrap();
            assert_eq!(from, a.local_addr().unwrap());
            assert_eq!(&buf[..n], &expected[..]);
        }
    }

    #[tokio::test]
    async fn batched_receives_give_each_datagram_whole_with_its_sender() {
        let receiving = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = receiving.local_addr().unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // 70 datagrams, more than one batch, from two senders, one of 20,000 bytes; about
        // 100 KiB of the kernel's accounting, within Linux's default 208 KiB buffer.
        let mut sent = Vec::new();
        for i in 0..70usize {
            let from = if i % 3 == 0 { &b } else { &a };
            let bytes = vec![i as u8; if i == 50 { 20_000 } else { 1 + i * 5 }];
            from.send_to(&bytes, to).await.unwrap();
            sent.push((bytes, from.local_addr().unwrap()));
        }
        let mut receiver = Receiver::new();
        let mut got = Vec::new();
        while got.len() < sent.len() {
            let ready =
                tokio::time::timeout(std::time::Duration::from_secs(5), receiving.readable());
            ready.await.expect("a datagram was lost").unwrap();
            match receiver.receive(&receiving) {
                Ok(n) => {
                    assert!(n <= RECEIVE_BATCH);
                    for i in 0..n {
                        let (bytes, from) = receiver.datagram(i);
                        got.push((bytes.to_vec(), from.unwrap()));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(got == sent, "datagrams differ");
    }

    #[test]
    fn a_run_ends_at_a_longer_datagram_or_after_a_shorter_one() {
        let sender = Sender::new();
        let sizes = |s: &[usize]| s.iter().map(|&n| vec![0u8; n]).collect::<Vec<_>>();
        assert_eq!(sender.run_at(&sizes(&[100, 100, 50, 100])), 3);
        assert_eq!(sender.run_at(&sizes(&[100, 200, 100])), 1);
        assert_eq!(sender.run_at(&sizes(&[100])), 1);
        assert_eq!(sender.run_at(&sizes(&[10; 100])), MAX_SEGMENTS);
    }
}
