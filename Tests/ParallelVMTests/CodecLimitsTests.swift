import Foundation
import Testing

@testable import ParallelVMCodec

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// MARK: - Fixtures

/// Class list: one nesting level per node.
private final class Chain: Codable {
    var id: Int
    var next: Chain?
    init(id: Int, next: Chain?) {
        self.id = id
        self.next = next
    }

    /// `depth` nodes; the head has id `depth - 1`.
    static func make(_ depth: Int) -> Chain {
        var c = Chain(id: 0, next: nil)
        for i in 1..<depth { c = Chain(id: i, next: c) }
        return c
    }

    var length: Int {
        var n = 1
        var c = next
        while let x = c {
            n += 1
            c = x.next
        }
        return n
    }

    /// Releases the list node by node: a recursive release of thousands of nodes could itself
    /// exhaust a small stack.
    func dismantle() {
        var c = next
        next = nil
        while let x = c {
            c = x.next
            x.next = nil
        }
    }
}

private final class Box<T: Codable>: Codable {
    let value: T
    init(_ value: T) { self.value = value }
}

/// Struct list through a box: two nesting levels (Box, Link) per node.
private struct Link: Codable {
    var id: Int
    var next: Box<Link>?
}

/// Nested arrays `[[[...]]]`: two levels (Nest, [Nest]) per step.
private struct Nest: Codable {
    var inner: [Nest]

    static func make(_ steps: Int) -> Nest {
        var n = Nest(inner: [])
        for _ in 1..<steps { n = Nest(inner: [n]) }
        return n
    }

    var steps: Int {
        var n = 1
        var cur = self
        while let x = cur.inner.first {
            n += 1
            cur = x
        }
        return n
    }
}

private indirect enum Expr: Codable, Equatable {
    case leaf(Int)
    case neg(Expr)
}

/// Runs `body` on a new POSIX thread with a `stackSize`-byte stack and waits for it.
private func onThread(stackSize: Int, _ body: @escaping @Sendable () -> Void) {
    final class Job {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }
    let job = Unmanaged.passRetained(Job(body)).toOpaque()
    withUnsafeTemporaryAllocation(of: pthread_attr_t.self, capacity: 1) { attrBuffer in
        let attr = attrBuffer.baseAddress!
        #expect(pthread_attr_init(attr) == 0)
        defer { pthread_attr_destroy(attr) }
        #expect(pthread_attr_setstacksize(attr, stackSize) == 0)
        withUnsafeTemporaryAllocation(of: pthread_t.self, capacity: 1) { tid in
            let rc = pthread_create(
                tid.baseAddress!,
                attr,
                { p in
                    #if canImport(Darwin)
                    let job = Unmanaged<Job>.fromOpaque(p).takeRetainedValue()
                    #else
                    let job = Unmanaged<Job>.fromOpaque(p!).takeRetainedValue()
                    #endif
                    job.body()
                    return nil
                },
                job
            )
            #expect(rc == 0)
            if rc == 0 { pthread_join(tid[0], nil) }
        }
    }
}

/// Varint as the wire format writes it.
private func varint(_ v: UInt64) -> [UInt8] {
    var w = ByteWriter()
    w.writeVarint(v)
    return w.bytes
}

/// Hand-built encoding of a `Chain` `depth` nodes deep, written outside-in without recursion.
private func chainBytes(depth: Int) -> [UInt8] {
    // Each node: keyed { "id": Int, "next": <node> } with the innermost node's "next" omitted.
    let idEntry: [UInt8] = varint(2 << 1 | 1) + Array("id".utf8) + [8 << 3 | 1] + [UInt8](repeating: 0, count: 8)
    let nextKey: [UInt8] = varint(4 << 1 | 1) + Array("next".utf8)
    // Payload length of each node, innermost first.
    var payload = [Int](repeating: 0, count: depth)
    payload[0] = idEntry.count
    for i in 1..<depth {
        let inner = varint(UInt64(payload[i - 1]) << 3 | 5).count + payload[i - 1]
        payload[i] = idEntry.count + nextKey.count + inner
    }
    var out: [UInt8] = []
    out.reserveCapacity(payload[depth - 1] + 8)
    for i in stride(from: depth - 1, through: 0, by: -1) {
        out += varint(UInt64(payload[i]) << 3 | 5)
        out += idEntry
        if i > 0 { out += nextKey }
    }
    return out
}

/// Peak resident set size of this process, in bytes.
private func peakRSS() -> Int {
    var u = rusage()
    #if canImport(Darwin)
    getrusage(RUSAGE_SELF, &u)
    return Int(u.ru_maxrss)
    #else
    getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &u)
    return Int(u.ru_maxrss) * 1024
    #endif
}

// MARK: - Nesting limit

@Suite struct CodecNestingLimitTests {
    let limit = BinaryEncoder.maxDepth

    @Test func limitIsDocumentedAndShared() {
        #expect(BinaryEncoder.maxDepth == 128)
        #expect(BinaryDecoder.maxDepth == BinaryEncoder.maxDepth)
    }

    @Test func tenThousandDeepEncodeThrowsInsteadOfOverflowing() throws {
        let chain = Chain.make(10_000)
        defer { chain.dismantle() }
        do {
            _ = try BinaryEncoder.encode(chain)
            Issue.record("expected the nesting limit")
        } catch {
            #expect(error.code == .nestingTooDeep)
            #expect(error.isEncoding)
            #expect(error.reason.contains("maximum depth of \(limit)"))
            #expect(error.valueTypeName.hasSuffix("Chain"))
            #expect(error.description.contains("Chain"))
            #expect(error.description.contains("BinaryEncoder.maxDepth"))
            // The path is elided, not 128 components long.
            #expect(error.codingPath.contains("…"))
            #expect(error.codingPath.count < 200)
        }
        // encode(into:) leaves the buffer untouched on failure.
        var buffer: [UInt8] = [1, 2, 3]
        #expect(throws: CodecError.self) { try BinaryEncoder.encode(chain, into: &buffer) }
        #expect(buffer == [1, 2, 3])
        // The recycled encoder is not left in a bad state.
        #expect(try BinaryDecoder.decode(Int.self, from: BinaryEncoder.encode(7)) == 7)
    }

    @Test func otherDeepShapesThrow() throws {
        let nest = Nest.make(10_000)
        #expect(throws: CodecError.self) { try BinaryEncoder.encode(nest) }
        var expr = Expr.leaf(1)
        for _ in 0..<10_000 { expr = .neg(expr) }
        do {
            _ = try BinaryEncoder.encode(expr)
            Issue.record("expected the nesting limit")
        } catch {
            #expect(error.code == .nestingTooDeep)
            #expect(error.valueTypeName.hasSuffix("Expr"))
        }
        // Release the enum iteratively as well.
        while case .neg(let inner) = expr { expr = inner }
    }

    @Test func valuesAtTheLimitRoundTrip() throws {
        let chain = Chain.make(limit)
        defer { chain.dismantle() }
        let bytes = try BinaryEncoder.encode(chain)
        let back = try BinaryDecoder.decode(Chain.self, from: bytes)
        defer { back.dismantle() }
        #expect(back.length == limit && back.id == limit - 1)
        // One more level is refused on both sides.
        let over = Chain(id: limit, next: chain)
        #expect(throws: CodecError.self) { try BinaryEncoder.encode(over) }
        over.next = nil

        // Two levels per node: limit / 2 nodes fit.
        var link = Link(id: 0, next: nil)
        for i in 1..<(limit / 2) { link = Link(id: i, next: Box(link)) }
        let linkBack = try BinaryDecoder.decode(Link.self, from: BinaryEncoder.encode(link))
        #expect(linkBack.id == limit / 2 - 1)
        #expect(throws: CodecError.self) { try BinaryEncoder.encode(Link(id: -1, next: Box(link))) }

        let nest = Nest.make(limit / 2)
        #expect(try BinaryDecoder.decode(Nest.self, from: BinaryEncoder.encode(nest)).steps == limit / 2)
        #expect(throws: CodecError.self) { try BinaryEncoder.encode(Nest(inner: [nest])) }
    }

    @Test func atTheLimitFitsA512KiBThreadStack() {
        // Debug builds use the most stack per level; even so the limit fits a secondary thread.
        onThread(stackSize: 512 * 1024) {
            let limit = BinaryEncoder.maxDepth
            do {
                let chain = Chain.make(limit)
                defer { chain.dismantle() }
                let back = try BinaryDecoder.decode(Chain.self, from: BinaryEncoder.encode(chain))
                defer { back.dismantle() }
                #expect(back.length == limit)
                let nest = Nest.make(limit / 2)
                #expect(try BinaryDecoder.decode(Nest.self, from: BinaryEncoder.encode(nest)).steps == limit / 2)
                // Past the limit the small stack is safe too: the codec throws first.
                let deep = Chain.make(10_000)
                defer { deep.dismantle() }
                #expect(throws: CodecError.self) { try BinaryEncoder.encode(deep) }
                #expect(throws: CodecError.self) {
                    try BinaryDecoder.decode(Chain.self, from: chainBytes(depth: 10_000))
                }
            } catch {
                Issue.record("unexpected \(error)")
            }
        }
    }

    @Test func decoderRefusesInputNestedPastTheLimit() throws {
        // Bytes one level too deep, made by an encoder allowed to go further.
        let chain = Chain.make(limit + 1)
        defer { chain.dismantle() }
        let bytes = try BinaryEncoder.encode(chain, maxDepth: limit + 1)
        do {
            _ = try BinaryDecoder.decode(Chain.self, from: bytes)
            Issue.record("expected the nesting limit")
        } catch {
            #expect(error.code == .nestingTooDeep)
            #expect(!error.isEncoding)
            #expect(error.reason.contains("maximum depth of \(limit)"))
            #expect(error.description.hasPrefix("cannot decode"))
            #expect(error.description.contains("Chain"))
            #expect(error.description.contains("BinaryDecoder.maxDepth"))
        }
        let raised = try BinaryDecoder.decode(Chain.self, from: bytes, maxDepth: limit + 1)
        #expect(raised.length == limit + 1)
        raised.dismantle()

        // Hand-built input 10,000 levels deep: refused, not a stack overflow.
        let deep = chainBytes(depth: 10_000)
        do {
            _ = try BinaryDecoder.decode(Chain.self, from: deep)
            Issue.record("expected the nesting limit")
        } catch {
            #expect(error.code == .nestingTooDeep)
            #expect(error.codingPath.contains("…"))
        }
        // The hand-built format is the real one: a shallow instance decodes.
        let shallow = try BinaryDecoder.decode(Chain.self, from: chainBytes(depth: 3))
        #expect(shallow.length == 3)
        // The recycled decoder still works afterwards.
        #expect(try BinaryDecoder.decode(Chain.self, from: bytes, maxDepth: limit + 1).length == limit + 1)
    }

    @Test func caughtDepthErrorsStillFailTheEncode() throws {
        /// Swallows its child's error, as careless user code might.
        struct Swallow: Encodable {
            let chain: Chain
            func encode(to encoder: any Encoder) throws {
                var c = encoder.container(keyedBy: CodecPathKey.self)
                try? c.encode(chain, forKey: CodecPathKey(stringValue: "chain"))
            }
        }
        let chain = Chain.make(limit + 5)
        defer { chain.dismantle() }
        #expect(throws: CodecError.self) { try BinaryEncoder.encode(Swallow(chain: chain)) }
    }
}

// MARK: - Sizes from the input

@Suite struct CodecInputSizeTests {
    /// Asserts `body` throws a CodecError with one of `codes`, quickly and without a large allocation.
    private func expectRefused(
        _ codes: [CodecError.Code],
        sourceLocation: SourceLocation = #_sourceLocation,
        _ body: () throws -> Void
    ) {
        let rss = peakRSS()
        let start = ContinuousClock.now
        do {
            try body()
            Issue.record("expected a CodecError", sourceLocation: sourceLocation)
        } catch let e as CodecError {
            #expect(codes.contains(e.code), "\(e)", sourceLocation: sourceLocation)
        } catch {
            Issue.record("unexpected \(error)", sourceLocation: sourceLocation)
        }
        #expect(ContinuousClock.now - start < .seconds(1), sourceLocation: sourceLocation)
        #expect(peakRSS() - rss < 64 << 20, sourceLocation: sourceLocation)
    }

    /// Unkeyed container header claiming `count` elements, followed by `payload`.
    private func unkeyed(count: UInt32, _ payload: [UInt8]) -> [UInt8] {
        var w = ByteWriter()
        w.writeVarint(UInt64(4 + payload.count) << 3 | 6)
        w.write(count)
        w.writeRaw(payload)
        return w.bytes
    }

    /// Keyed container with one entry `key: value`.
    private func keyed(_ key: String, _ value: [UInt8]) -> [UInt8] {
        let entry = varint(UInt64(key.utf8.count) << 1 | 1) + Array(key.utf8) + value
        return varint(UInt64(entry.count) << 3 | 5) + entry
    }

    @Test func hugeUnkeyedCountsAreRefused() {
        struct Big: Codable { var a: Int, b: Int, c: Int, d: Int, e: String }
        // One real element, but a count of 2^31 - 1 (which would reserve about 100 GiB of Big).
        let one = [UInt8(0)]
        for count: UInt32 in [0x7FFF_FFFF, 0xFFFF_FFFF, 2] {
            expectRefused([.corrupted]) { _ = try BinaryDecoder.decode([Big].self, from: unkeyed(count: count, one)) }
            expectRefused([.corrupted]) {
                _ = try BinaryDecoder.decode([[Int]].self, from: unkeyed(count: count, one))
            }
            expectRefused([.corrupted]) {
                _ = try BinaryDecoder.decode(Set<Int>.self, from: unkeyed(count: count, one))
            }
            expectRefused([.corrupted]) {
                _ = try BinaryDecoder.decode([Int16: String].self, from: unkeyed(count: count, one))
            }
            // Data and [UInt8] written element by element take the unkeyed path.
            expectRefused([.corrupted]) { _ = try BinaryDecoder.decode(Data.self, from: unkeyed(count: count, one)) }
            expectRefused([.corrupted]) {
                _ = try BinaryDecoder.decode([UInt8].self, from: unkeyed(count: count, one))
            }
        }
        // Inside a struct, the field fails with its path.
        struct Holder: Codable { var list: [Big] }
        do {
            _ = try BinaryDecoder.decode(Holder.self, from: keyed("list", unkeyed(count: 0x7FFF_FFFF, [0])))
            Issue.record("expected failure")
        } catch {
            #expect(error.code == .corrupted)
            #expect(error.codingPath == "list")
        }
        // A count shorter than its 4 bytes.
        expectRefused([.corrupted]) { _ = try BinaryDecoder.decode([Int].self, from: [2 << 3 | 6, 1, 0]) }
    }

    @Test func rawArraysLongerThanTheInputAreRefused() {
        // Raw [Double] header claiming 0x7FFFFFFF elements (16 GiB) followed by 3 bytes.
        for claimed: UInt64 in [0x7FFF_FFFF * 8 + 1, UInt64(Int32.max), 1 << 40] {
            var w = ByteWriter()
            w.writeVarint(claimed << 3 | 7)
            w.write(Double.codecRawCode)
            w.writeRaw([1, 2])
            expectRefused([.truncated]) { _ = try BinaryDecoder.decode([Double].self, from: w.bytes) }
            expectRefused([.truncated]) { _ = try BinaryDecoder.decode([UInt8].self, from: w.bytes) }
            expectRefused([.truncated]) { _ = try BinaryDecoder.decode(Data.self, from: w.bytes) }
            expectRefused([.truncated]) { _ = try BinaryDecoder.decode([Int].self, from: w.bytes) }
            struct Holder: Codable { var v: [Double] }
            expectRefused([.truncated]) { _ = try BinaryDecoder.decode(Holder.self, from: keyed("v", w.bytes)) }
        }
        // Element bytes not a multiple of the width, read directly or element by element.
        let odd: [UInt8] = [4 << 3 | 7, Double.codecRawCode, 1, 2, 3]
        expectRefused([.corrupted]) { _ = try BinaryDecoder.decode([Double].self, from: odd) }
        struct Wrapper: Codable { var x: Double }
        expectRefused([.corrupted]) { _ = try BinaryDecoder.decode([Wrapper].self, from: odd) }
    }

    @Test func stringAndKeyLengthsPastTheEndAreRefused() {
        struct S: Codable { var s: String }
        // String header claiming 0x7FFFFFFF bytes, 3 present.
        let str = varint(UInt64(0x7FFF_FFFF) << 3 | 4) + [0x61, 0x62, 0x63]
        expectRefused([.truncated]) { _ = try BinaryDecoder.decode(String.self, from: str) }
        expectRefused([.truncated]) { _ = try BinaryDecoder.decode(S.self, from: keyed("s", str)) }
        expectRefused([.truncated]) { _ = try BinaryDecoder.decode([String].self, from: unkeyed(count: 1, str)) }
        // A key whose length runs past its container.
        let badKey = [UInt8(6 << 3 | 5)] + varint(UInt64(0x7FFF_FFFF) << 1 | 1) + [0x73, 0, 0, 0, 0, 0]
        expectRefused([.corrupted, .keyNotFound]) { _ = try BinaryDecoder.decode(S.self, from: badKey) }
        expectRefused([.corrupted, .keyNotFound, .typeMismatch]) {
            _ = try BinaryDecoder.decode([String: Int].self, from: badKey)
        }
        // A nested container header longer than its parent.
        let inner = varint(UInt64(0x7FFF_FFFF) << 3 | 6) + [1, 0, 0, 0]
        struct L: Codable { var s: [String] }
        expectRefused([.truncated]) { _ = try BinaryDecoder.decode(L.self, from: keyed("s", inner)) }
        // Framing reader lengths.
        var w = ByteWriter()
        w.writeVarint(0x7FFF_FFFF)
        w.writeRaw([1, 2, 3])
        w.bytes.withUnsafeBytes { raw in
            var r = ByteReader(raw)
            expectRefused([.truncated]) { _ = try r.readBytes() }
            var r2 = ByteReader(raw)
            expectRefused([.truncated]) { _ = try r2.readString() }
            var r3 = ByteReader(raw)
            expectRefused([.truncated]) { _ = try r3.readRaw(count: 0x7FFF_FFFF) }
        }
    }
}
