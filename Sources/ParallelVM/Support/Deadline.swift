import Glibc

/// Seconds on the monotonic clock.
@inline(__always)
func monotonicSeconds() -> Double {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Double(now.tv_sec) + Double(now.tv_nsec) * 1e-9
}

/// The moment a wait gives up, worked out once from the timeout a caller passed.
///
/// Every public wait takes `timeout: Double?` with one meaning: nil, negative or `.infinity` waits for ever,
/// 0 only looks, a positive number waits that many seconds. NaN is refused: it compares false with
/// everything, so a wait given it would block for ever without saying why.
struct Deadline: Sendable, Equatable {
    /// Monotonic seconds; nil for a wait without end.
    let at: Double?

    static let never = Deadline(at: nil)
    /// Already passed: a wait that only looks. It reads no clock, which matters to loops that poll.
    static let now = Deadline(at: -.infinity)

    /// Whether this is ``now``: a wait that only looks.
    var isImmediate: Bool { at == -.infinity }

    fileprivate init(at: Double?) { self.at = at }

    /// The deadline `timeout` seconds from now; `operation` names the call in the error for NaN.
    init(timeout: Double?, for operation: @autoclosure () -> String) throws(VMError) {
        guard let timeout else {
            self.at = nil
            return
        }
        guard !timeout.isNaN else {
            throw VMError(
                .invalidArgument,
                "\(operation()): timeout must be a number of seconds (nil, negative or .infinity waits for ever), not NaN"
            )
        }
        self.at = timeout < 0 || timeout.isInfinite ? nil : monotonicSeconds() + timeout
    }

    /// Seconds left (never negative), or nil for a wait without end.
    var remaining: Double? {
        guard let at else { return nil }
        return at == -.infinity ? 0 : Swift.max(0, at - monotonicSeconds())
    }

    var hasPassed: Bool {
        guard let at else { return false }
        return at == -.infinity || monotonicSeconds() >= at
    }
}

extension Deadline {
    /// The deadline `seconds` after `now` (monotonic seconds).
    static func after(seconds: Double, from now: Double) -> Deadline { Deadline(at: now + seconds) }

}
