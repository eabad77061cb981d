/// A VM frame between a worker rank and its task process: the rank at the other end (where the frame goes,
/// or where it came from), the frame, and its separate payload if it has one.
///
/// Layout: peer rank (Int32 LE), frame length (UInt32 LE), frame, then the payload (the rest).
/// The frame itself is the same frame MPI carries, so the worker forwards it without reading it.
enum Relay {
    static func encode(peer: Int, frame: [UInt8], payload: [UInt8]?) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(8 + frame.count + (payload?.count ?? 0))
        withUnsafeBytes(of: Int32(peer).littleEndian) { bytes.append(contentsOf: $0) }
        withUnsafeBytes(of: UInt32(frame.count).littleEndian) { bytes.append(contentsOf: $0) }
        bytes.append(contentsOf: frame)
        if let payload { bytes.append(contentsOf: payload) }
        return bytes
    }

    static func decode(_ bytes: [UInt8]) throws(VMError) -> (peer: Int, frame: [UInt8], payload: [UInt8]?) {
        var reader = WireReader(bytes, offset: 0)
        let peer = Int(try reader.read(Int32.self))
        let length = Int(try reader.read(UInt32.self))
        guard length <= bytes.count - 8, length >= Wire.headerSize else {
            throw VMError(.encoding, "malformed relay frame: \(length) frame bytes in \(bytes.count)")
        }
        let frame = Array(bytes[8..<8 + length])
        let separate = frame[1] & Wire.flagSeparatePayload != 0
        return (peer, frame, separate ? Array(bytes[(8 + length)...]) : nil)
    }
}
