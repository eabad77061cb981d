#ifndef PARALLELVM_SHARED_RING_H
#define PARALLELVM_SHARED_RING_H

#include <stdint.h>

/// A single-producer, single-consumer ring of frames in memory shared by two processes (a worker rank and
/// its task process), so that a small frame passes between them without a system call. Each frame is a
/// 32-bit length and that many bytes, wrapped around the end of the data area. The producer publishes the
/// new tail with release ordering after writing the bytes; the consumer publishes the new head after
/// reading them. `waiting` is set by a consumer about to block in the kernel: a producer that finds it set
/// after publishing a frame wakes the consumer another way (a byte on a socket).
///
/// The memory of a ring is `parallelvm_ring_size(capacity)` bytes, zeroed (a fresh `memfd` is), with
/// `capacity` a power of two.

/// The bytes a ring with `capacity` bytes of data takes in memory.
uint64_t parallelvm_ring_size(uint64_t capacity);

/// Writes one frame if the ring has room for it; returns 1 if it did, 0 if not (nothing is written then).
/// A `length` of `UINT32_MAX` writes a marker: a frame header with no bytes, which `next_length` returns
/// as `UINT32_MAX` and `take` removes.
int parallelvm_ring_write(void *ring, uint64_t capacity, const void *bytes, uint32_t length);

/// The length of the next frame, or -1 when the ring holds none.
int64_t parallelvm_ring_next_length(void *ring, uint64_t capacity);

/// Copies the next frame (whose length `parallelvm_ring_next_length` returned) into `destination` and
/// removes it from the ring.
void parallelvm_ring_take(void *ring, uint64_t capacity, void *destination, uint32_t length);
/// The bytes the producer may write now (length prefixes included); call from the producer.
uint64_t parallelvm_ring_room(void *ring, uint64_t capacity);
/// Drops the next frame (of `length` bytes, as its prefix gives it) without reading it.
void parallelvm_ring_skip(void *ring, uint32_t length);

/// Marks the consumer as about to block (1) or not (0), with sequential consistency: a producer that
/// publishes a frame after the mark sees it, and a consumer that checks the ring after the mark sees
/// every frame published before.
void parallelvm_ring_set_waiting(void *ring, int waiting);

/// Whether the consumer said it is about to block; clears the mark when `clear` is set and returns what it was.
int parallelvm_ring_consumer_waiting(void *ring, int clear);

/// A new anonymous shared file (`memfd_create`, close-on-exec) of `size` zero bytes; its descriptor, or -1
/// with errno set.
int parallelvm_shared_memory_create(uint64_t size);

/// Maps `size` bytes of the shared file `fd` for reading and writing; NULL with errno set on failure.
void *parallelvm_shared_memory_map(int fd, uint64_t size);

/// Unmaps what `parallelvm_shared_memory_map` mapped.
void parallelvm_shared_memory_unmap(void *memory, uint64_t size);

/// Writes one piece of a message if the ring has room for it; returns 1 if it did, 0 if not. The piece's
/// length prefix has its top bit set when `more` pieces of the same message follow, and the bit below it
/// on the `first` piece of a message (so `length` must be below 2^30); `parallelvm_ring_next_length`
/// returns the prefix as written.
int parallelvm_ring_write_piece(void *ring, uint64_t capacity, const void *bytes, uint32_t length, int first,
                                int more);

/// A 64-bit word in shared memory, read and written with sequential consistency.
uint64_t parallelvm_shared_load(void *word);
void parallelvm_shared_store(void *word, uint64_t value);
/// Replaces the word with `desired` if it holds `expected`; returns whether it did.
int parallelvm_shared_compare_exchange(void *word, uint64_t expected, uint64_t desired);

#endif
