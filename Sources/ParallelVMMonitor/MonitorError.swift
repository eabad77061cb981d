/// Why a ``VMMonitor`` could not start.
public struct MonitorError: Error, Sendable, CustomStringConvertible {
    /// The kind of failure.
    public enum Code: Sendable, Equatable {
        /// The monitor would listen on an address other than loopback without a token.
        case tokenRequired
        /// The token is empty or has characters that do not fit in an HTTP header.
        case invalidToken
        /// The port is not in 0...65535.
        case invalidPort
        /// The HTTP server could not listen (the address is in use, or not one of this machine's).
        case cannotListen
    }

    /// The kind of failure.
    public let code: Code
    /// What went wrong, naming the address, port or token at fault.
    public let message: String
    /// The error of the HTTP server, for ``Code-swift.enum/cannotListen``.
    public let underlying: (any Error & Sendable)?

    init(_ code: Code, _ message: String, underlying: (any Error & Sendable)? = nil) {
        self.code = code
        self.message = message
        self.underlying = underlying
    }

    public var description: String { "VMMonitor: \(message)" }
}
