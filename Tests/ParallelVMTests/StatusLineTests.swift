import Testing

@testable import ParallelVM

/// Where the progress line goes, decided from the environment and what the process's descriptors are.
struct StatusLineTests {
    static let underMPI = ["OMPI_COMM_WORLD_SIZE": "3"]

    func target(
        _ environment: [String: String],
        standardErrorIsTerminal: Bool = false,
        terminal: Int32? = nil,
        launcherWritesToTerminal: Bool = false
    ) -> StatusLine.Target? {
        StatusLine.chooseTarget(
            environment: environment,
            standardErrorIsTerminal: standardErrorIsTerminal,
            openTerminal: { terminal },
            launcherWritesToTerminal: { launcherWritesToTerminal }
        )
    }

    @Test func aTerminalOnStandardErrorIsUsed() {
        #expect(target([:], standardErrorIsTerminal: true) == .standardError)
        #expect(target(Self.underMPI, standardErrorIsTerminal: true, terminal: 9) == .standardError)
    }

    @Test func underMPIFromATerminalTheLineGoesWhereTheLauncherWrites() {
        #expect(target(Self.underMPI, terminal: 9, launcherWritesToTerminal: true) == .standardOutput)
        // mpirun's output redirected to a file: the terminal it was started from still shows the line.
        #expect(target(Self.underMPI, terminal: 9, launcherWritesToTerminal: false) == .terminal(9))
    }

    @Test func withoutATerminalNothingIsDrawnUnlessAsked() {
        #expect(target([:]) == nil)
        #expect(target(Self.underMPI) == nil)
        // Not under a launcher, a controlling terminal alone does not turn it on (stderr was redirected).
        #expect(target([:], terminal: 9) == nil)
        #expect(target(["PARALLELVM_PROGRESS": "1"]) == .standardError)
        #expect(target(["PARALLELVM_PROGRESS": "1"], terminal: 9) == .terminal(9))
    }

    @Test func zeroTurnsItOffEverywhere() {
        let off = Self.underMPI.merging(["PARALLELVM_PROGRESS": "0"]) { $1 }
        #expect(target(off, standardErrorIsTerminal: true, terminal: 9, launcherWritesToTerminal: true) == nil)
    }
}
