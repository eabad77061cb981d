import Glibc
import ParallelVMStorage

// Experiment code calls POSIX through storage's checked `SystemCall` (EINTR retried, call and errno kept);
// these are the pieces only experiments need.

extension SystemCallError {
    /// The `ExperimentError` a user sees: "<subject> <path> could not be <operation>: <call>: <errno text>".
    func experimentError(
        _ operation: String,
        experiment: String,
        path: String,
        subject: String = "path",
        code: ExperimentError.Code = .ioFailure
    ) -> ExperimentError {
        ExperimentError(
            code,
            experiment: experiment,
            path: path,
            reason: "could not be \(operation): \(text)",
            subject: subject,
            call: "\(call)",
            errnoCode: errno
        )
    }
}

extension SystemCall {
    /// Writes all of `bytes` at the file position (or the end, for `O_APPEND`), looping over short writes.
    static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Result<Void, SystemCallError> {
        var done = 0
        while done < bytes.count {
            switch value("write", { Glibc.write(fd, bytes.baseAddress! + done, bytes.count - done) }) {
            case .success(let n): done += n
            case .failure(let failure): return .failure(failure)
            }
        }
        return .success(())
    }

    /// Reads the whole open file from its current position.
    static func readAll(_ fd: Int32, sizeHint: Int = 0) -> Result<[UInt8], SystemCallError> {
        var bytes = [UInt8](repeating: 0, count: max(sizeHint, 4096) + 1)
        var count = 0
        while true {
            if count == bytes.count { bytes.append(contentsOf: repeatElement(0, count: bytes.count)) }
            let room = bytes.count - count
            let read = bytes.withUnsafeMutableBytes { raw in
                value("read") { Glibc.read(fd, raw.baseAddress! + count, room) }
            }
            switch read {
            case .success(0):
                bytes.removeSubrange(count...)
                return .success(bytes)
            case .success(let n): count += n
            case .failure(let failure): return .failure(failure)
            }
        }
    }
}

extension Result where Failure == SystemCallError {
    /// The value, or an `ExperimentError` naming the experiment, the path, the operation and the call.
    @inline(__always) @discardableResult
    func get(
        _ operation: String,
        experiment: String,
        path: @autoclosure () -> String,
        subject: String = "path",
        code: ExperimentError.Code = .ioFailure
    ) throws(ExperimentError) -> Success {
        switch self {
        case .success(let value): return value
        case .failure(let failure):
            throw failure.experimentError(
                operation,
                experiment: experiment,
                path: path(),
                subject: subject,
                code: code
            )
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
}

/// Small path helpers: `/`-separated strings, as the storage code uses.
enum Paths {
    /// Joins a folder and a relative path ("" meaning the folder itself).
    static func join(_ folder: String, _ relative: String) -> String {
        if relative.isEmpty { return folder }
        return folder.hasSuffix("/") ? folder + relative : folder + "/" + relative
    }

    /// Makes a path absolute (relative to the current folder) and removes `.`, empty components and
    /// trailing slashes lexically; `..` is kept for the kernel to resolve.
    static func absolute(_ path: String) -> String {
        var full = path
        if !full.hasPrefix("/") {
            var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
            let count = buffer.count
            let cwd =
                getcwd(&buffer, count) != nil
                ? buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) } : "/"
            full = cwd + "/" + full
        }
        let parts = full.split(separator: "/", omittingEmptySubsequences: true).filter { $0 != "." }
        return "/" + parts.joined(separator: "/")
    }

    /// This host's name as `gethostname` reports it.
    static func hostName() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        let count = buffer.count - 1
        guard gethostname(&buffer, count) == 0 else { return "localhost" }
        return buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }

    /// A random 64-bit value in hexadecimal, for temporary and staging names.
    static func randomSuffix() -> String { String(UInt64.random(in: 0...UInt64.max), radix: 16) }
}
