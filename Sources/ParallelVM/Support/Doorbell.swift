import Glibc

/// Wakes an idle worker on the spawner's host without either of them spinning.
///
/// Polling MPI and sleeping between polls cannot give both a low idle cost and a quick first message after
/// idling: every wake-up costs CPU, and a long sleep delays the message. An idle worker on the spawner's
/// host therefore blocks in `poll` on a datagram socket of its own (in the abstract namespace, so nothing
/// appears on disk), and the spawner sends it one byte after a message that may find it asleep. The kernel
/// wakes the worker in about ten microseconds.
final class Doorbell: @unchecked Sendable {
    // Invariant for @unchecked Sendable: `descriptor` and `token` never change; datagram sockets may be
    // used from several threads at once.
    private let descriptor: Int32
    /// A random number that makes this process's socket name unique on the host, with its PID.
    let token: UInt64

    /// Opens and binds this process's doorbell, or returns nil when the system does not allow it.
    init?() {
        let fd = socket(
            AF_UNIX,
            Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue),
            0
        )
        guard fd >= 0 else { return nil }
        let token = UInt64.random(in: 1...UInt64.max)
        var (address, length) = Doorbell.address(pid: getpid(), token: token)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
        }
        guard bound == 0 else {
            close(fd)
            return nil
        }
        self.descriptor = fd
        self.token = token
    }

    deinit { close(descriptor) }

    /// The abstract-namespace address of the doorbell of process `pid` with `token`.
    private static func address(pid: Int32, token: UInt64) -> (sockaddr_un, socklen_t) {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let name = Array("parallelvm-\(pid)-\(token)".utf8)
        withUnsafeMutableBytes(of: &address.sun_path) { path in
            path[0] = 0  // a leading NUL puts the name in the abstract namespace
            for (index, byte) in name.enumerated() where index + 1 < path.count { path[index + 1] = byte }
        }
        let length = MemoryLayout<sockaddr_un>.offset(of: \.sun_path)! + 1 + min(name.count, 106)
        return (address, socklen_t(length))
    }

    /// Wakes the process `pid` whose doorbell has `token`. Never blocks; a full socket means it is already rung.
    func ring(pid: Int32, token: UInt64) {
        var (address, length) = Doorbell.address(pid: pid, token: token)
        var byte: UInt8 = 1
        _ = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                sendto(descriptor, &byte, 1, Int32(MSG_DONTWAIT), $0, length)
            }
        }
    }

    /// Waits until the doorbell rings or `milliseconds` pass, then empties it. Returns whether it rang.
    @discardableResult
    func wait(milliseconds: Int32) -> Bool {
        var request = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        _ = poll(&request, 1, milliseconds)
        return empty()
    }

    /// Waits until the doorbell rings, `other` becomes readable, or `milliseconds` pass, and empties the
    /// doorbell. Returns whether either was ready. A worker rank waits so on its bell and its task process.
    @discardableResult
    func wait(milliseconds: Int32, orReadable other: Int32) -> Bool {
        var requests = [
            pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0),
            pollfd(fd: other, events: Int16(POLLIN), revents: 0),
        ]
        _ = poll(&requests, 2, milliseconds)
        let otherReady = requests[1].revents != 0
        return empty() || otherReady
    }

    /// Reads every pending ring; returns whether there was one.
    private func empty() -> Bool {
        var rang = false
        var buffer = (UInt64(0), UInt64(0))
        while withUnsafeMutableBytes(of: &buffer, { recv(descriptor, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) })
            > 0
        {
            rang = true
        }
        return rang
    }
}
