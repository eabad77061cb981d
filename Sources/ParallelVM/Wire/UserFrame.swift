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
        var (frame, payload) = try frame(value, from: sourceTask, to: destination, knownTasks: knownTasks)
        try transport.sendFrame(&frame, payload: payload, to: destination.slot)
    }

    /// The frame of a user value, and the encoded value that travels as its payload.
    static func frame<T: Encodable>(
        _ value: T,
        from sourceTask: Int,
        to destination: TaskID,
        knownTasks: Int
    ) throws(VMError) -> (WireWriter, payload: [UInt8]) {
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
        var frame = WireWriter(
            kind: .user,
            sourceTask: sourceTask,
            destinationTask: destination.number,
            capacity: 64 + payload.count
        )
        // A byte array needs no type name: the raw flag says what it is.
        frame.append(raw ? "" : TypeNames.qualified(T.self))
        frame.append(raw)
        frame.append(Int64(knownTasks))
        return (frame, payload)
    }

    /// The sender's known-tasks mark, read without decoding the rest.
    static func knownTasks(_ envelope: Envelope) -> Int {
        var reader = envelope.reader
        guard (try? reader.readString()) != nil, (try? reader.readBool()) != nil,
            let mark = try? reader.read(Int64.self)
        else { return 0 }
        return Int(mark)
    }

    static func message(from envelope: Envelope) throws(VMError) -> UserMessage {
        var reader = envelope.reader
        let named = try reader.readString()
        let raw = try reader.readBool()
        _ = try reader.read(Int64.self)
        return UserMessage(typeName: raw ? TypeNames.bytes : named, bytes: envelope.payload(after: &reader), raw: raw)
    }
}
