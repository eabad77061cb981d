import Glibc

/// A system call that failed: its name and the errno it left.
package struct SystemCallError: Error {
    /// The call, e.g. "openat".
    package let call: StaticString
    /// The errno value it failed with.
    package let errno: Int32

    package init(call: StaticString, errno: Int32) {
        self.call = call
        self.errno = errno
    }

    /// "openat: No such file or directory (errno 2)".
    package var text: String { "\(call): \(PathUtil.errnoText(errno))" }

    /// The `StorageError` a user sees: "<subject> <path> could not be <operation>: <call>: <errno text>".
    func storageError(
        _ operation: String,
        path: String,
        subject: String = "path",
        code: StorageError.Code = .ioFailure
    ) -> StorageError {
        StorageError(
            code,
            path: path,
            reason: "could not be \(operation): \(text)",
            subject: subject,
            call: "\(call)",
            errnoCode: errno
        )
    }
}

/// The one way storage (and experiment code) calls POSIX functions that report failure through `errno`.
///
/// A call is retried while it fails with `EINTR` (a signal arrived before it did anything), so no caller
/// has to remember to; the failure comes back with the call's name so the error can say which step failed.
package enum SystemCall {
    /// Runs `body` (a call returning -1 on failure) until it does not fail with `EINTR`.
    /// - Parameter retryOnInterrupt: false for calls that must not be repeated, such as `close`.
    @inline(__always)
    package static func value<T: FixedWidthInteger & SignedInteger>(
        _ call: StaticString,
        retryOnInterrupt: Bool = true,
        _ body: () -> T
    ) -> Result<T, SystemCallError> {
        while true {
            let result = body()
            if result >= 0 { return .success(result) }
            let err = Glibc.errno
            if err == EINTR && retryOnInterrupt { continue }
            return .failure(SystemCallError(call: call, errno: err))
        }
    }

    /// Runs `body` (a call returning NULL on failure) until it does not fail with `EINTR`.
    @inline(__always)
    package static func pointer<T>(
        _ call: StaticString,
        retryOnInterrupt: Bool = true,
        _ body: () -> T?
    ) -> Result<T, SystemCallError> {
        while true {
            if let result = body() { return .success(result) }
            let err = Glibc.errno
            if err == EINTR && retryOnInterrupt { continue }
            return .failure(SystemCallError(call: call, errno: err))
        }
    }

    /// `close(2)`, never retried: on Linux the descriptor is gone even when close reports `EINTR`.
    package static func close(_ fd: Int32) {
        _ = value("close", retryOnInterrupt: false) { Glibc.close(fd) }
    }
}

extension Result where Failure == SystemCallError {
    /// The value, or a `StorageError` naming the path, the operation and the failed call.
    @inline(__always) @discardableResult
    func get(
        _ operation: String,
        path: @autoclosure () -> String,
        subject: String = "path",
        code: StorageError.Code = .ioFailure
    ) throws(StorageError) -> Success {
        switch self {
        case .success(let value): return value
        case .failure(let failure): throw failure.storageError(operation, path: path(), subject: subject, code: code)
        }
    }

    /// True when the call failed with one of `codes`.
    func failed(with codes: Int32...) -> Bool {
        if case .failure(let failure) = self { return codes.contains(failure.errno) }
        return false
    }

    /// The failure, or nil on success.
    var failure: SystemCallError? {
        if case .failure(let failure) = self { return failure }
        return nil
    }

    /// True on success.
    var succeeded: Bool { failure == nil }
}

/// Offset of `d_name` in `struct dirent`, so names go to `*at` calls without making Strings.
private let direntNameOffset = MemoryLayout<dirent>.offset(of: \dirent.d_name)!

/// A directory listing with `readdir(3)` that owns its descriptor and closes it when released.
final class DirectoryStream {
    private let dir: OpaquePointer

    /// The descriptor of the listed folder, for `*at` calls on its entries.
    var fd: Int32 { dirfd(dir) }

    /// Takes ownership of the open folder `fd` (closed on failure too).
    init(taking fd: Int32) throws(SystemCallError) {
        switch SystemCall.pointer("fdopendir", { fdopendir(fd) }) {
        case .success(let dir): self.dir = dir
        case .failure(let failure):
            SystemCall.close(fd)
            throw failure
        }
    }

    deinit { closedir(dir) }

    /// The next entry other than `.` and `..`: its name (valid until the next call) and `d_type`.
    func next() throws(SystemCallError) -> (name: UnsafePointer<CChar>, type: UInt8)? {
        while true {
            Glibc.errno = 0
            guard let entry = readdir(dir) else {
                let err = Glibc.errno
                if err == 0 { return nil }
                throw SystemCallError(call: "readdir", errno: err)
            }
            let name = UnsafeRawPointer(entry).advanced(by: direntNameOffset).assumingMemoryBound(to: CChar.self)
            if name[0] == 0x2E && (name[1] == 0 || (name[1] == 0x2E && name[2] == 0)) { continue }
            return (name, entry.pointee.d_type)
        }
    }

    /// Every remaining entry name, sorted.
    func names() throws(SystemCallError) -> [String] {
        var names: [String] = []
        while let entry = try next() { names.append(String(cString: entry.name)) }
        return names.sorted()
    }
}
