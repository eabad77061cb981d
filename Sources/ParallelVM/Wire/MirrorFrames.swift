import ParallelVMStorage

/// The frames that bring a tree of unshared mirror sources to a host's mirror cache, once per host and VM
/// object, before the first task there that needs it:
///
///     spawner → worker   mirrorOffer   the tree's digest; payload: the encoded tree (a `MirrorTree`)
///     worker  → spawner  mirrorNeed    an error text ("" for none), then the indices of the missing contents
///     spawner → worker   mirrorData    payload: the next bytes of the missing contents, in order (as many frames
///                                      as it takes; none when nothing is missing)
///     worker  → spawner  mirrorStored  an error text ("" when every content is in the cache)
enum MirrorFrames {
    /// Bytes of content per `mirrorData` frame.
    static let chunkSize = 8 << 20

    static func offer(digest: String, tree: [UInt8], over link: any FrameLink, to rank: Int) throws(VMError) {
        var frame = WireWriter(kind: .mirrorOffer, sourceTask: 0, destinationTask: 0)
        frame.append(digest)
        frame.insertFlags(Wire.flagSeparatePayload)
        try link.send(frame.bytes, payload: tree, to: rank)
    }

    static func readOffer(_ envelope: Envelope) throws(VMError) -> (digest: String, tree: [UInt8]) {
        var reader = envelope.reader
        let digest = try reader.readString()
        return (digest, envelope.payload(after: &reader))
    }

    static func need(error: String, missing: [Int], over link: any FrameLink) throws(VMError) {
        var frame = WireWriter(kind: .mirrorNeed, sourceTask: 0, destinationTask: 0, capacity: 64 + missing.count * 4)
        frame.append(error)
        frame.append(UInt32(missing.count))
        for index in missing { frame.append(UInt32(index)) }
        try link.send(frame.bytes, to: 0)
    }

    static func readNeed(_ envelope: Envelope) throws(VMError) -> (error: String, missing: [Int]) {
        var reader = envelope.reader
        let error = try reader.readString()
        let count = Int(try reader.read(UInt32.self))
        var missing: [Int] = []
        missing.reserveCapacity(count)
        for _ in 0..<count { missing.append(Int(try reader.read(UInt32.self))) }
        return (error, missing)
    }

    static func data(_ bytes: [UInt8], over link: any FrameLink, to rank: Int) throws(VMError) {
        var frame = WireWriter(kind: .mirrorData, sourceTask: 0, destinationTask: 0)
        frame.insertFlags(Wire.flagSeparatePayload)
        try link.send(frame.bytes, payload: bytes, to: rank)
    }

    static func stored(error: String, over link: any FrameLink) throws(VMError) {
        var frame = WireWriter(kind: .mirrorStored, sourceTask: 0, destinationTask: 0)
        frame.append(error)
        try link.send(frame.bytes, to: 0)
    }

    static func readStored(_ envelope: Envelope) throws(VMError) -> String {
        var reader = envelope.reader
        return try reader.readString()
    }
}
