internal import CMPI

/// A process's rank in a communicator.
public struct Rank: Hashable, Comparable, Sendable, CustomStringConvertible {
    /// The rank as MPI numbers it.
    public let rawValue: Int32

    /// Creates a rank from its number.
    public init(_ rawValue: Int32) { self.rawValue = rawValue }
    /// Creates a rank from its number.
    public init(_ rawValue: Int) { self.rawValue = Int32(rawValue) }

    /// Matches a message from any rank (`MPI_ANY_SOURCE`).
    public static let any = Rank(MPI_ANY_SOURCE)

    public static func < (lhs: Rank, rhs: Rank) -> Bool { lhs.rawValue < rhs.rawValue }
    public var description: String { String(rawValue) }
}

/// A message tag.
public struct Tag: Hashable, Sendable, CustomStringConvertible {
    /// The tag as MPI numbers it.
    public let rawValue: Int32

    /// Creates a tag from its number.
    public init(_ rawValue: Int32) { self.rawValue = rawValue }

    /// Matches a message with any tag (`MPI_ANY_TAG`).
    public static let any = Tag(MPI_ANY_TAG)

    public var description: String { String(rawValue) }
}

/// The thread support MPI was asked for or granted (`MPI_THREAD_*`).
public enum ThreadLevel: Int32, Comparable, Sendable {
    case single = 0
    case funneled = 1
    case serialized = 2
    case multiple = 3

    // MPI_THREAD_* are C enum constants (0...3 in every MPI), imported as Int.
    init(mpi value: Int32) {
        self = ThreadLevel(rawValue: value) ?? .single
    }

    var mpiValue: Int32 { rawValue }

    public static func < (lhs: ThreadLevel, rhs: ThreadLevel) -> Bool { lhs.rawValue < rhs.rawValue }
}
