internal import CSharedRing
internal import Glibc

/// The two rings of a channel in memory shared by a supervisor and its task process: one each way, so
/// that small frames pass without a system call. The supervisor creates the memory before it starts the
/// child and hands its descriptor over; the child maps it in `childDidStart`.
final class SharedRings: @unchecked Sendable {
    // Invariant for @unchecked Sendable: the mapping never changes after init; the rings' own counters are
    // atomics, and each ring has one producer (under the channel's send lock) and one consumer (under its
    // receive lock).

    /// The bytes of data in each ring.
    static let capacity: UInt64 = 256 * 1024
    /// Longer frames go through the socket, after a marker in the ring that keeps their place in order.
    static let largestFrame = 64 * 1024
    /// What `nextLength` returns for a marker.
    static let marker = Int64(UInt32.max)

    private let memory: UnsafeMutableRawPointer
    private let size: UInt64
    /// The ring this end writes, and the one it reads.
    let outgoing: UnsafeMutableRawPointer
    let incoming: UnsafeMutableRawPointer

    /// The size of the shared memory for both rings.
    static var memorySize: UInt64 { 2 * parallelvm_ring_size(capacity) }

    /// Maps the shared memory `fd`; the supervisor's end writes the first ring, the child's end the second.
    init(mapping fd: Int32, supervisorEnd: Bool) throws(ProcessError) {
        size = SharedRings.memorySize
        guard let mapped = parallelvm_shared_memory_map(fd, size) else {
            throw .systemCall("mmap", errno: errno, "could not map the task process's shared channel memory")
        }
        memory = mapped
        let second = mapped + Int(parallelvm_ring_size(SharedRings.capacity))
        outgoing = supervisorEnd ? mapped : second
        incoming = supervisorEnd ? second : mapped
    }

    deinit {
        parallelvm_shared_memory_unmap(memory, size)
    }

    /// New shared memory for a channel's rings: its descriptor (close-on-exec).
    static func createMemory() throws(ProcessError) -> Int32 {
        let fd = parallelvm_shared_memory_create(memorySize)
        guard fd >= 0 else {
            throw .systemCall("memfd_create", errno: errno, "could not create the task process's shared channel memory")
        }
        return fd
    }

    /// Writes a frame (or, with `marker`, a marker) into the outgoing ring if it has room; returns whether it did.
    func write(_ bytes: UnsafeRawBufferPointer) -> Bool {
        parallelvm_ring_write(outgoing, SharedRings.capacity, bytes.baseAddress, UInt32(bytes.count)) == 1
    }

    func writeMarker() -> Bool {
        parallelvm_ring_write(outgoing, SharedRings.capacity, nil, UInt32.max) == 1
    }

    /// The length of the next incoming frame (`marker` for a marker), or nil when there is none.
    func nextLength() -> Int64? {
        let length = parallelvm_ring_next_length(incoming, SharedRings.capacity)
        return length < 0 ? nil : length
    }

    /// Takes the next incoming frame, whose length `nextLength` returned.
    func take(length: Int64) -> [UInt8] {
        if length == SharedRings.marker {
            parallelvm_ring_take(incoming, SharedRings.capacity, nil, UInt32.max)
            return []
        }
        return [UInt8](unsafeUninitializedCapacity: Int(length)) { buffer, count in
            parallelvm_ring_take(incoming, SharedRings.capacity, buffer.baseAddress, UInt32(length))
            count = Int(length)
        }
    }

    /// Marks this end as about to block for the incoming ring, or not any more.
    func setWaiting(_ waiting: Bool) { parallelvm_ring_set_waiting(incoming, waiting ? 1 : 0) }

    /// Whether the peer is about to block for the outgoing ring; clears its mark (the caller wakes it).
    func takePeerWaiting() -> Bool { parallelvm_ring_consumer_waiting(outgoing, 1) == 1 }
}
