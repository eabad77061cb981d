internal import Glibc

/// An error raised while starting, supervising or talking to a child process.
///
/// It keeps the failing call and errno, so that a worker can report "socketpair failed: Too many open files"
/// rather than a bare number, and a `Code` so that callers can tell a peer that went away (the usual way a
/// crashed task process shows itself on the channel) from a real fault.
package struct ProcessError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What went wrong, for programmatic handling.
    package enum Code: String, Sendable, Hashable {
        /// A system call failed; `call` and `errno` say which and why.
        case systemCall
        /// `posix_spawn` could not start the executable (missing, not executable, bad interpreter, ...).
        case spawnFailed
        /// The other end of a channel closed: the peer exited, crashed or closed its end.
        case peerGone
        /// A frame header announced a length above `MessageChannel.maximumFrameLength`: the stream is corrupt.
        case corruptFrame
        /// A caller asked to send a frame longer than `MessageChannel.maximumFrameLength`.
        case frameTooLarge
        /// The environment a task process was started with is missing or malformed.
        case badEnvironment
        /// `waitid` found no such child: someone else reaped it, or `SIGCHLD` is ignored.
        case lostChild
    }

    /// What went wrong.
    package var code: Code
    /// A sentence for a user, without the errno text (which `description` appends).
    package var message: String
    /// The system call that failed, if one did.
    package var call: String?
    /// errno after the failed call, if one did.
    package var errno: Int32?

    package init(_ code: Code, _ message: String, call: String? = nil, errno: Int32? = nil) {
        self.code = code
        self.message = message
        self.call = call
        self.errno = errno
    }

    /// An error for a failed system call, with errno's text.
    package static func systemCall(_ call: String, errno: Int32, _ context: String? = nil) -> ProcessError {
        ProcessError(.systemCall, context ?? "\(call) failed", call: call, errno: errno)
    }

    package var description: String {
        guard let errno else { return message }
        return "\(message): \(String(cString: strerror(errno))) (errno \(errno))"
    }
}
