import Glibc

/// Wakes an idle worker on the spawner's host without either of them spinning.
///
/// Polling MPI and sleeping between polls cannot give both a low idle cost and a quick first message after
/// idling: every wake-up costs CPU, and a long sleep delays the message. An idle worker on the spawner's
/// host therefore blocks in `poll` on a datagram socket of its own (in the abstract namespace, so nothing
/// appears on disk), and the spawner sends it one byte after a message that may find it asleep. The kernel
/// wakes the worker in about ten microseconds.
///
/// Across hosts the same bell rings over the network: a UDP socket of its own, on an ephemeral port, that
/// the other side sends one datagram to. A lost datagram only delays a message by the 10 ms an idle waiter
/// polls MPI anyway.
final class Doorbell: @unchecked Sendable {
    // Invariant for @unchecked Sendable: the descriptors, `token` and `networkPort` never change; datagram
    // sockets may be used from several threads at once.
    private let descriptor: Int32
    /// The UDP socket rung from other hosts; -1 when the system gave none.
    private let networkDescriptor: Int32
    /// A random number that makes this process's socket name unique on the host, with its PID.
    let token: UInt64
    /// The UDP port of the network bell (0: none).
    let networkPort: UInt16

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
        (networkDescriptor, networkPort) = Doorbell.openNetworkBell()
    }

    deinit {
        close(descriptor)
        if networkDescriptor >= 0 { close(networkDescriptor) }
    }

    /// A non-blocking UDP socket on an ephemeral port of every address, and its port; (-1, 0) when none.
    private static func openNetworkBell() -> (Int32, UInt16) {
        let fd = socket(
            AF_INET,
            Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue),
            0
        )
        guard fd >= 0 else { return (-1, 0) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = INADDR_ANY
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
                bind(fd, pointer, length) == 0 && getsockname(fd, pointer, &length) == 0
            }
        }
        guard bound else {
            close(fd)
            return (-1, 0)
        }
        return (fd, UInt16(bigEndian: address.sin_port))
    }

    /// This host's IPv4 addresses other than loopback, with their netmasks (network byte order).
    static func hostAddresses() -> [(address: UInt32, mask: UInt32)] {
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0 else { return [] }
        defer { freeifaddrs(list) }
        var found: [(UInt32, UInt32)] = []
        var entry = list
        while let current = entry {
            defer { entry = current.pointee.ifa_next }
            guard let address = current.pointee.ifa_addr, address.pointee.sa_family == sa_family_t(AF_INET),
                current.pointee.ifa_flags & UInt32(IFF_LOOPBACK) == 0, current.pointee.ifa_flags & UInt32(IFF_UP) != 0
            else { continue }
            let ipv4 = address.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee.sin_addr.s_addr }
            let mask =
                current.pointee.ifa_netmask?.withMemoryRebound(to: sockaddr_in.self, capacity: 1) {
                    $0.pointee.sin_addr.s_addr
                } ?? 0
            found.append((ipv4, mask))
        }
        return found
    }

    /// Of another host's addresses, the one on a network this host is on, else its first; nil for none.
    static func reachableAddress(among addresses: [UInt32]) -> UInt32? {
        let mine = hostAddresses()
        return addresses.first { theirs in mine.contains { ($0.address & $0.mask) == (theirs & $0.mask) } }
            ?? addresses.first
    }

    /// Wakes the process whose network bell is at `address` (IPv4, network byte order) and `port`. Never
    /// blocks.
    func ring(address: UInt32, port: UInt16) {
        guard networkDescriptor >= 0 else { return }
        var target = sockaddr_in()
        target.sin_family = sa_family_t(AF_INET)
        target.sin_addr.s_addr = address
        target.sin_port = port.bigEndian
        var byte: UInt8 = 1
        _ = withUnsafePointer(to: &target) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                sendto(networkDescriptor, &byte, 1, Int32(MSG_DONTWAIT), $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
    }

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
        var requests = [
            pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0),
            pollfd(fd: networkDescriptor, events: Int16(POLLIN), revents: 0),
        ]
        _ = poll(&requests, networkDescriptor >= 0 ? 2 : 1, milliseconds)
        return empty()
    }

    /// Waits until the doorbell rings, `other` becomes readable, or `milliseconds` pass, and empties the
    /// doorbell. Returns whether either was ready. A worker rank waits so on its bell and its task process.
    @discardableResult
    func wait(milliseconds: Int32, orReadable other: Int32) -> Bool {
        var requests = [
            pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0),
            pollfd(fd: other, events: Int16(POLLIN), revents: 0),
            pollfd(fd: networkDescriptor, events: Int16(POLLIN), revents: 0),
        ]
        _ = poll(&requests, networkDescriptor >= 0 ? 3 : 2, milliseconds)
        let otherReady = requests[1].revents != 0
        return empty() || otherReady
    }

    /// Reads every pending ring; returns whether there was one.
    private func empty() -> Bool {
        var rang = false
        var buffer = (UInt64(0), UInt64(0))
        for fd in [descriptor, networkDescriptor] where fd >= 0 {
            while withUnsafeMutableBytes(of: &buffer, { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }) > 0 {
                rang = true
            }
        }
        return rang
    }
}

/// Where to ring another process's doorbell: on this host by PID and token, or over the network.
enum BellTarget: Sendable {
    case local(pid: Int32, token: UInt64)
    case network(NetworkBellTarget)
}

extension Doorbell {
    func ring(_ target: BellTarget) {
        switch target {
        case .local(let pid, let token): ring(pid: pid, token: token)
        case .network(let bell): ring(address: bell.address, port: bell.port)
        }
    }

    /// What a worker rings to wake the spawner that `welcome` comes from, and whether it can be rung at
    /// all; nil when it cannot (the worker then polls MPI while idle, and the spawner sleeps between polls).
    func spawnerBell(from welcome: Welcome, workerHost: HostID) -> BellTarget? {
        if welcome.host == workerHost {
            return welcome.doorbell != 0 ? .local(pid: welcome.pid, token: welcome.doorbell) : nil
        }
        guard networkPort != 0, let target = welcome.bell.target else { return nil }
        return .network(NetworkBellTarget(address: target.address, port: target.port))
    }
}
