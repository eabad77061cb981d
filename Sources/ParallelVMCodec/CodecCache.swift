// Per-thread reuse of encoder/decoder objects: after warm-up a small encode or decode performs
// no allocation of its own besides the stdlib's keyed-container box and the result.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Holds at most one idle BinaryEncoderImpl and one idle BinaryDecoderImpl per thread (in pthread TLS slots).
/// An object is taken out of its slot while in use, so re-entrant use (an `encode(to:)` that
/// itself calls BinaryEncoder) simply allocates a fresh one.
enum CodecCache {
    private static let encKey: pthread_key_t = makeKey()
    private static let decKey: pthread_key_t = makeKey()
    /// Buffers that grew beyond this are dropped rather than kept for the thread's lifetime.
    static let maxRetainedBytes = 1 << 20

    private static func makeKey() -> pthread_key_t {
        var key = pthread_key_t()
        // The destructor releases the parked object when the thread exits.
        let rc = pthread_key_create(&key) { p in
            #if canImport(Darwin)
            Unmanaged<AnyObject>.fromOpaque(p).release()
            #else
            if let p { Unmanaged<AnyObject>.fromOpaque(p).release() }
            #endif
        }
        precondition(rc == 0, "pthread_key_create failed")
        return key
    }

    @inline(__always)
    private static func take<T: AnyObject>(_ key: pthread_key_t, _ type: T.Type) -> T? {
        guard let p = pthread_getspecific(key) else { return nil }
        pthread_setspecific(key, nil)
        return Unmanaged<T>.fromOpaque(p).takeRetainedValue()
    }

    @inline(__always)
    private static func park<T: AnyObject>(_ key: pthread_key_t, _ object: T) {
        guard pthread_getspecific(key) == nil else { return }
        pthread_setspecific(key, Unmanaged.passRetained(object).toOpaque())
    }

    static func encoder(topType: any Any.Type) -> BinaryEncoderImpl {
        if let e = take(encKey, BinaryEncoderImpl.self) {
            e.reset(topType: topType)
            return e
        }
        return BinaryEncoderImpl(topType: topType)
    }

    static func recycle(_ e: BinaryEncoderImpl) {
        guard e.buf.capacity <= maxRetainedBytes else { return }
        park(encKey, e)
    }

    static func decoder(input: CodecInput, topType: any Any.Type, root: CodecSlot) -> BinaryDecoderImpl {
        if let d = take(decKey, BinaryDecoderImpl.self) {
            d.reset(input: input, topType: topType, root: root)
            return d
        }
        return BinaryDecoderImpl(input: input, topType: topType, root: root)
    }

    static func recycle(_ d: BinaryDecoderImpl) {
        d.input = CodecInput(UnsafeRawBufferPointer(start: nil, count: 0))  // never keep a dangling view
        park(decKey, d)
    }
}
