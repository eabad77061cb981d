internal import Glibc
internal import Synchronization

/// One line of `/proc/PID/stat`: enough to walk the process tree.
package struct ProcessStatus: Sendable, Hashable {
    package var pid: Int32
    package var parent: Int32
    package var group: Int32
    /// The state letter: `R`, `S`, `D`, `Z` (zombie), `T`, ...
    package var state: Character
    /// The executable's name as the kernel keeps it (at most 15 bytes).
    package var command: String

    package var isZombie: Bool { state == "Z" || state == "X" }

    /// Reads `/proc/PID/stat`; `nil` if the process is gone.
    package init?(pid: Int32) {
        let fd = open("/proc/\(pid)/stat", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { closeDescriptor(fd) }
        var bytes = [UInt8](repeating: 0, count: 1024)
        let count = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard count > 0 else { return nil }
        self.init(statLine: String(decoding: bytes[0..<count], as: UTF8.self))
    }

    /// Parses "pid (command) state ppid pgrp ..."; the command may itself contain spaces and parentheses,
    /// so the fields after it are found from the last ')'.
    package init?(statLine: String) {
        guard let open = statLine.firstIndex(of: "("), let close = statLine.lastIndex(of: ")"),
            let pid = pid_t(statLine[..<open].trimmingSpaces)
        else { return nil }
        let fields = statLine[statLine.index(after: close)...].split(separator: " ")
        guard fields.count >= 3, let state = fields[0].first, let parent = pid_t(fields[1]),
            let group = pid_t(fields[2])
        else { return nil }
        self.pid = pid
        self.parent = parent
        self.group = group
        self.state = state
        self.command = String(statLine[statLine.index(after: open)..<close])
    }

    /// Every process this process can see in `/proc`.
    package static func all() -> [ProcessStatus] {
        guard let directory = opendir("/proc") else { return [] }
        defer { closedir(directory) }
        var result: [ProcessStatus] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) {
                String(cString: $0.bindMemory(to: CChar.self).baseAddress!)
            }
            if let pid = pid_t(name), let status = ProcessStatus(pid: pid) { result.append(status) }
        }
        return result
    }
}

extension Substring {
    fileprivate var trimmingSpaces: Substring {
        var result = self
        while result.first == " " { result.removeFirst() }
        while result.last == " " { result.removeLast() }
        return result
    }
}

extension ChildProcess {
    /// Makes this process the reaper of orphans among its descendants (`PR_SET_CHILD_SUBREAPER`).
    ///
    /// A task that double-forks or calls `setsid` leaves a process outside the task process's group, which
    /// would otherwise be adopted by init, out of the supervisor's sight, and could keep `mpirun` waiting on
    /// a pipe. With this set, such processes become children of this process, where `reapOrphans` finds them.
    package static func enableSubreaper() throws(ProcessError) {
        try prctl(PrctlOption.setChildSubreaper, 1, name: "PR_SET_CHILD_SUBREAPER")
    }

    /// Gives orphans back to init, undoing `enableSubreaper`.
    package static func disableSubreaper() throws(ProcessError) {
        try prctl(PrctlOption.setChildSubreaper, 0, name: "PR_SET_CHILD_SUBREAPER")
    }

    /// Sends `signal` to every process descending from `root` (not to `root` itself), scanning again until no
    /// new one shows up, and returns the IDs signalled.
    ///
    /// Meant for after a task: the task process stays, everything the task started goes. A process killed by
    /// `SIGKILL` cannot fork any more, so the rescans end.
    @discardableResult
    package static func killDescendants(of root: Int32, signal: Signal = .kill) -> [Int32] {
        var signalled = Set<pid_t>()
        for _ in 0..<100 {
            let fresh = descendants(of: root, in: ProcessStatus.all()).filter { !signalled.contains($0) }
            if fresh.isEmpty { break }
            for pid in fresh {
                _ = kill(pid, signal.rawValue)
                signalled.insert(pid)
            }
        }
        return signalled.sorted()
    }

    /// Kills (`SIGKILL`) and reaps every child of this process that `spawn` did not start and `sparing` does
    /// not name, with their descendants, and returns the IDs reaped.
    ///
    /// With `enableSubreaper`, a task's escaped grandchildren end up as such children. Every other child is
    /// taken for one too, so a program that starts children by other means lists them in `sparing`. A
    /// process that does not die within a few seconds (stuck in the kernel) is left for the next call.
    @discardableResult
    package static func reapOrphans(sparing: Set<Int32> = []) -> [Int32] {
        let me = getpid()
        var reaped: [pid_t] = []
        for _ in 0..<100 {
            // Under the lock, so a child being spawned right now is either in the set or not yet our child.
            let orphans = liveChildren.withLock { known -> [pid_t] in
                let table = ProcessStatus.all()
                let orphans = table.filter { $0.parent == me && !known.contains($0.pid) && !sparing.contains($0.pid) }
                for orphan in orphans where !orphan.isZombie {
                    for pid in descendants(of: orphan.pid, in: table) { _ = kill(pid, SIGKILL) }
                    _ = kill(orphan.pid, SIGKILL)
                }
                return orphans.map(\.pid)
            }
            let newlyReaped = orphans.filter { reap($0, within: .seconds(3)) }
            reaped += newlyReaped
            if newlyReaped.isEmpty { break }
        }
        return reaped
    }

    /// The processes below `root` in `table`, parents before their children.
    private static func descendants(of root: pid_t, in table: [ProcessStatus]) -> [Int32] {
        var children: [pid_t: [pid_t]] = [:]
        for process in table where !process.isZombie { children[process.parent, default: []].append(process.pid) }
        var result: [pid_t] = []
        var queue = children[root] ?? []
        var seen = Set<pid_t>([root])
        while !queue.isEmpty {
            let pid = queue.removeFirst()
            guard seen.insert(pid).inserted else { continue }
            result.append(pid)
            queue += children[pid] ?? []
        }
        return result
    }

    /// Reaps one child that was sent `SIGKILL`, waiting at most `timeout`; returns whether it was reaped.
    private static func reap(_ pid: pid_t, within timeout: Duration) -> Bool {
        let deadline = ContinuousClock.now + timeout
        var status: Int32 = 0
        while true {
            let result = waitpid(pid, &status, WNOHANG)
            if result == pid { return true }
            if result == -1 && errno != EINTR { return false }
            if ContinuousClock.now >= deadline { return false }
            sleepThread(.milliseconds(2))
        }
    }
}
