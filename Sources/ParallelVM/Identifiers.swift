import Foundation

/// Identifies a task: the slot (MPI rank) it runs in and a task number unique within the run.
///
/// The spawner's own task is `0:0`. Task numbers are assigned by the spawner, so a `TaskID` names one task
/// even after its slot has served others.
public struct TaskID: Hashable, Comparable, Sendable, Codable, CustomStringConvertible {
    /// The slot (MPI rank) the task runs in.
    public let slot: Int
    /// The task number, unique within the run.
    public let number: Int

    /// Creates a task ID from a slot and a task number.
    public init(slot: Int, number: Int) {
        self.slot = slot
        self.number = number
    }

    /// The spawner's own task, `0:0`.
    public static let spawner = TaskID(slot: 0, number: 0)

    /// Parses the `slot:number` form that ``description`` prints.
    public init?(_ text: String) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, let slot = Int(parts[0]), let number = Int(parts[1]), slot >= 0, number >= 0 else {
            return nil
        }
        self.init(slot: slot, number: number)
    }

    public var description: String { "\(slot):\(number)" }

    public static func < (lhs: TaskID, rhs: TaskID) -> Bool {
        (lhs.number, lhs.slot) < (rhs.number, rhs.slot)
    }
}

/// Identifies a host by its processor name (`MPI_Get_processor_name`).
public struct HostID: Hashable, Comparable, Sendable, Codable, CustomStringConvertible, ExpressibleByStringLiteral {
    /// The processor name.
    public let name: String

    /// Creates a host ID from a processor name.
    public init(_ name: String) { self.name = name }
    public init(stringLiteral value: String) { self.name = value }

    public var description: String { name }
    public static func < (lhs: HostID, rhs: HostID) -> Bool { lhs.name < rhs.name }
}

extension HostID {
    /// Host names joined for an error text; an empty or blank name, or one with spaces at its ends, is
    /// quoted so that it still shows: `node1, "", " "`.
    static func quotedList(_ hosts: some Sequence<HostID>) -> String {
        hosts.map(\.displayName).joined(separator: ", ")
    }

    /// The name as an error text shows it: quoted when it is empty or has white space at either end.
    var displayName: String {
        let trimmed = name.trimmingCharacters(in: .whitespacesAndNewlines)
        return trimmed.isEmpty || trimmed != name ? "\"\(name)\"" : name
    }
}
