// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "ParallelVM",
    products: [
        .library(name: "ParallelVM", targets: ["ParallelVM"]),
        .library(name: "MPI", targets: ["MPI"]),
        // The web monitor, a product of its own so that the VM library does not pull in an HTTP server.
        .library(name: "ParallelVMMonitor", targets: ["ParallelVMMonitor"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        // `swift package generate-documentation --target ParallelVM` builds the DocC catalog.
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
        // The monitor's HTTP server; only ParallelVMMonitor depends on it.
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        // Hummingbird's own service runner, used directly to stop the monitor gracefully.
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        // SHA-256 names the contents sent to hosts that do not share the spawner's folders.
        .package(url: "https://github.com/apple/swift-crypto", "3.12.3"..<"5.0.0"),
    ],
    targets: [
        // Open MPI, found through pkg-config; only module.modulemap and shim.h live here.
        .systemLibrary(
            name: "CMPI",
            pkgConfig: "ompi-c",
            providers: [.apt(["libopenmpi-dev"])]
        ),
        // The few MPI routines the VM uses, each checked and turned into a thrown MPIError.
        .target(name: "MPI", dependencies: ["CMPI"]),
        // How rank 0 ended (exit status or signal), written for scripts/mpirun.sh from before main on.
        .target(name: "CRunStatus"),
        // Asks a thread of this process, by a signal, whether it spins on a lock it holds (SpinWatch).
        .target(name: "CThreadProbe"),
        // zlib, found through pkg-config, for the CRC-32 of the journal's records.
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        // The binary Codable codec every VM message and result travels in. No MPI.
        .target(name: "ParallelVMCodec"),
        // Local storage: path translation, mirroring, task folders, clearing. No MPI.
        .target(
            name: "ParallelVMStorage",
            dependencies: ["ParallelVMCodec", .product(name: "Crypto", package: "swift-crypto")]
        ),
        // Task processes: spawning, supervising and killing a child, and the framed socket between them. No MPI.
        // A ring of frames in memory shared by a worker rank and its task process (C for its atomics).
        .target(name: "CSharedRing"),
        .target(name: "ParallelVMProcess", dependencies: ["CSharedRing"]),
        // Experiments: a named folder with a results journal, logs, a manifest and collected outputs. No MPI.
        .target(name: "ParallelVMExperiment", dependencies: ["CZlib", "ParallelVMCodec", "ParallelVMStorage"]),
        // The virtual machine: spawner, workers, messages, dispatcher.
        .target(
            name: "ParallelVM",
            dependencies: [
                "MPI", "CRunStatus", "CThreadProbe", "ParallelVMCodec", "ParallelVMStorage", "ParallelVMProcess",
                "ParallelVMExperiment", .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The web monitor: cluster, host and task pages, kill, live updates, a JSON API and Prometheus metrics.
        .target(
            name: "ParallelVMMonitor",
            dependencies: [
                "ParallelVM",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // The multi-rank scenarios the tests launch under mpirun.
        .executableTarget(name: "vm-scenarios", dependencies: ["ParallelVM"], path: "Tests/Scenarios"),
        // The benchmarks scripts/bench.sh runs under mpirun next to the C references in bench/c/.
        .executableTarget(
            name: "vm-bench",
            dependencies: ["ParallelVM", "ParallelVMExperiment", "ParallelVMCodec"],
            path: "bench/VMBench"
        ),
        // A program whose VM is a lazily initialized global that a task touches.
        .executableTarget(name: "vm-global-probe", dependencies: ["ParallelVM"], path: "Tests/GlobalVMProbe"),
        .testTarget(
            name: "ParallelVMTests",
            dependencies: [
                "ParallelVM", "ParallelVMCodec", "ParallelVMStorage", "MPI", "vm-scenarios", "vm-global-probe",
            ]
        ),
        // The child the process tests spawn: echoes frames, lists its descriptors, crashes on request.
        .executableTarget(name: "vm-process-probe", dependencies: ["ParallelVMProcess"], path: "Tests/ProcessProbe"),
        // The monitor under mpirun (the demo-11-monitor program), with a headless browser when one is installed.
        .testTarget(
            name: "ParallelVMMonitorTests",
            dependencies: ["ParallelVMMonitor", "ParallelVM", "demo-11-monitor"],
            exclude: ["browser.py"]
        ),
        .testTarget(name: "ParallelVMProcessTests", dependencies: ["ParallelVMProcess", "vm-process-probe"]),
        // The child the experiment tests spawn: opens an experiment and holds its lock until killed.
        .executableTarget(
            name: "vm-experiment-probe",
            dependencies: ["ParallelVMExperiment"],
            path: "Tests/ParallelVMExperimentTests/Probe"
        ),
        .testTarget(
            name: "ParallelVMExperimentTests",
            dependencies: ["ParallelVMExperiment", "ParallelVMCodec", "vm-experiment-probe"],
            exclude: ["Probe"]
        ),
    ]
)

// Demos: executable targets under demo/, one folder each.
package.targets.append(
    .executableTarget(
        name: "demo-11-monitor",
        dependencies: ["ParallelVM", "ParallelVMMonitor"],
        path: "demo/11-monitor"
    )
)
for demo in [
    "01-config", "02-spawn", "03-messaging", "04-mirror", "05-storage-cleanup", "06-spawn-result", "07-dispatch",
    "08-dyndispatch", "09-asyncloop", "10-experiment",
] {
    package.targets.append(
        .executableTarget(
            name: "demo-\(demo)",
            dependencies: ["ParallelVM"],
            path: "demo/\(demo)"
        )
    )
}

for target in package.targets where target.type != .system {
    target.swiftSettings =
        (target.swiftSettings ?? []) + [
            .enableUpcomingFeature("InternalImportsByDefault"),
            .enableUpcomingFeature("ExistentialAny"),
            .enableUpcomingFeature("MemberImportVisibility"),
        ]
}
