import ParallelVMCodec

/// Any task to any task: a user value.
///
/// Body: type name (empty for a raw value), raw flag (the value is `[UInt8]` sent as is), known-tasks mark,
/// then the encoded value (appended, or a payload message of its own when large).
///
/// The known-tasks mark is the sender's knowledge of which task numbers exist: every number below it had
/// been handed out by the spawner when the sender last heard. A task only learns of another task through
/// the spawner (its spawn request, or a message), so a destination at or above the mark names a task that
/// did not exist yet: the sender refuses it, and a receiver never holds such a message for a later task.
enum UserFrame {
    static func send<T: Encodable>(
        _ value: T,
        from sourceTask: Int,
        to destination: TaskID,
        knownTasks: Int,
        over transport: any FrameLink
    ) throws(VMError) {
        // A small byte array, the latency path: framed on the stack and sent from there.
        if T.self == [UInt8].self {
            let bytes = unsafeBitCast(value, to: [UInt8].self)
            let size = bodySize(typeName: "", inline: bytes.count)
            if size <= FrameBuilder.stackLimit {
                try FrameBuilder.withSmallFrame(
                    kind: .user,
                    sourceTask: sourceTask,
                    destinationTask: destination.number,
                    size: size,
                    body: { body in putBody(&body, typeName: "", raw: true, knownTasks: knownTasks, inline: bytes) },
                    use: { (frame) throws(VMError) in try transport.sendTransient(frame, to: destination.slot) }
                )
                return
            }
        }
        let (frame, payload) = try frame(value, from: sourceTask, to: destination, knownTasks: knownTasks)
        try transport.send(frame, payload: payload, to: destination.slot)
    }

    /// The frame of a user value, built in one allocation with the encoded value in it, and the encoded
    /// value on its own instead when it is large enough to travel as a message of its own.
    static func frame<T: Encodable>(
        _ value: T,
        from sourceTask: Int,
        to destination: TaskID,
        knownTasks: Int
    ) throws(VMError) -> (frame: [UInt8], payload: [UInt8]?) {
        let raw = T.self == [UInt8].self
        let payload: [UInt8]
        if raw {
            payload = unsafeBitCast(value, to: [UInt8].self)
        } else {
            do {
                payload = try BinaryEncoder.encode(value)
            } catch {
                throw VMError(
                    .encoding,
                    "cannot encode a message of type \(_typeName(T.self, qualified: true)) for task \(destination): \(error)",
                    underlying: error
                )
            }
        }
        // A byte array needs no type name: the raw flag says what it is.
        let typeName = raw ? "" : TypeNames.qualified(T.self)
        let separate = payload.count >= Wire.separatePayloadThreshold
        let frame = FrameBuilder.frame(
            kind: .user,
            flags: separate ? Wire.flagSeparatePayload : 0,
            sourceTask: sourceTask,
            destinationTask: destination.number,
            size: bodySize(typeName: typeName, inline: separate ? 0 : payload.count)
        ) { body in
            putBody(&body, typeName: typeName, raw: raw, knownTasks: knownTasks, inline: separate ? nil : payload)
        }
        return (frame, separate ? payload : nil)
    }

    /// The size of a user frame whose body carries `inline` bytes of the value.
    private static func bodySize(typeName: String, inline: Int) -> Int {
        Wire.headerSize + FrameBuilder.size(of: typeName) + 1 + 8 + inline
    }

    /// Writes a user frame's body: type name, raw flag, known-tasks mark, then the value when it travels inline.
    private static func putBody(
        _ body: inout FrameBuilder,
        typeName: String,
        raw: Bool,
        knownTasks: Int,
        inline: [UInt8]?
    ) {
        body.put(typeName)
        body.put(raw)
        body.put(Int64(knownTasks))
        inline?.withUnsafeBytes { body.put($0) }
    }

    /// The sender's known-tasks mark, read without decoding the rest.
    static func knownTasks(_ envelope: Envelope) -> Int {
        guard let fields = fields(of: envelope.frame) else { return 0 }
        return fields.knownTasks
    }

    static func message(from envelope: Envelope) throws(VMError) -> UserMessage {
        guard let fields = fields(of: envelope.frame) else {
            throw VMError(
                .encoding,
                "malformed VM message: a user message of \(envelope.frame.count) bytes from rank \(envelope.sourceRank)"
            )
        }
        let frame = envelope.frame
        let typeName =
            fields.raw
            ? TypeNames.bytes
            : fields.nameLength == 0
                ? ""
                : frame.withUnsafeBytes {
                    String(decoding: $0[Wire.headerSize + 4..<Wire.headerSize + 4 + fields.nameLength], as: UTF8.self)
                }
        let bytes =
            envelope.payload
            ?? (fields.payloadOffset == frame.count
                ? []
                : frame.withUnsafeBytes { [UInt8]($0[fields.payloadOffset...].assumingMemoryBound(to: UInt8.self)) })
        return UserMessage(typeName: typeName, bytes: bytes, raw: fields.raw)
    }

    /// The body's fixed fields, read in place: the type name's length, the raw flag, the known-tasks
    /// mark, and where the inline payload starts; nil when the frame is too short for them.
    private static func fields(
        of frame: [UInt8]
    ) -> (nameLength: Int, raw: Bool, knownTasks: Int, payloadOffset: Int)? {
        frame.withUnsafeBytes { bytes in
            guard bytes.count >= Wire.headerSize + 4 else { return nil }
            let nameLength = Int(
                UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: Wire.headerSize, as: UInt32.self))
            )
            let flagOffset = Wire.headerSize + 4 + nameLength
            guard bytes.count >= flagOffset + 9 else { return nil }
            let mark = Int64(littleEndian: bytes.loadUnaligned(fromByteOffset: flagOffset + 1, as: Int64.self))
            return (nameLength, bytes[flagOffset] != 0, Int(mark), flagOffset + 9)
        }
    }
}
