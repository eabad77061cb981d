#define _GNU_SOURCE
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "shared_ring.h"

// The header: each counter on its own cache line, so that the two processes do not share one they write.
struct header {
    _Atomic uint64_t head;  // bytes consumed, ever (written by the consumer)
    char pad1[56];
    _Atomic uint64_t tail;  // bytes produced, ever (written by the producer)
    char pad2[56];
    _Atomic uint32_t waiting;
    char pad3[60];
};

static unsigned char *data_of(void *ring) { return (unsigned char *)ring + sizeof(struct header); }

uint64_t parallelvm_ring_size(uint64_t capacity) { return sizeof(struct header) + capacity; }

static void copy_in(void *ring, uint64_t capacity, uint64_t position, const void *bytes, uint64_t length) {
    uint64_t offset = position & (capacity - 1);
    uint64_t first = capacity - offset < length ? capacity - offset : length;
    memcpy(data_of(ring) + offset, bytes, first);
    if (first < length) memcpy(data_of(ring), (const unsigned char *)bytes + first, length - first);
}

static void copy_out(void *ring, uint64_t capacity, uint64_t position, void *destination, uint64_t length) {
    uint64_t offset = position & (capacity - 1);
    uint64_t first = capacity - offset < length ? capacity - offset : length;
    memcpy(destination, data_of(ring) + offset, first);
    if (first < length) memcpy((unsigned char *)destination + first, data_of(ring), length - first);
}

int parallelvm_ring_write(void *ring, uint64_t capacity, const void *bytes, uint32_t length) {
    struct header *header = ring;
    uint64_t tail = atomic_load_explicit(&header->tail, memory_order_relaxed);
    uint64_t head = atomic_load_explicit(&header->head, memory_order_acquire);
    uint64_t needed = 4 + (length == UINT32_MAX ? 0 : (uint64_t)length);
    if (capacity - (tail - head) < needed) return 0;
    unsigned char prefix[4] = {
        (unsigned char)length, (unsigned char)(length >> 8), (unsigned char)(length >> 16),
        (unsigned char)(length >> 24),
    };
    copy_in(ring, capacity, tail, prefix, 4);
    if (length && length != UINT32_MAX) copy_in(ring, capacity, tail + 4, bytes, length);
    atomic_store_explicit(&header->tail, tail + needed, memory_order_seq_cst);
    return 1;
}

int64_t parallelvm_ring_next_length(void *ring, uint64_t capacity) {
    struct header *header = ring;
    uint64_t head = atomic_load_explicit(&header->head, memory_order_relaxed);
    uint64_t tail = atomic_load_explicit(&header->tail, memory_order_acquire);
    if (tail == head) return -1;
    unsigned char prefix[4];
    copy_out(ring, capacity, head, prefix, 4);
    return (int64_t)((uint32_t)prefix[0] | (uint32_t)prefix[1] << 8 | (uint32_t)prefix[2] << 16 |
                     (uint32_t)prefix[3] << 24);
}

void parallelvm_ring_take(void *ring, uint64_t capacity, void *destination, uint32_t length) {
    struct header *header = ring;
    uint64_t head = atomic_load_explicit(&header->head, memory_order_relaxed);
    if (length == UINT32_MAX) length = 0;
    if (length) copy_out(ring, capacity, head + 4, destination, length);
    atomic_store_explicit(&header->head, head + 4 + (uint64_t)length, memory_order_release);
}

uint64_t parallelvm_ring_room(void *ring, uint64_t capacity) {
    struct header *header = ring;
    uint64_t tail = atomic_load_explicit(&header->tail, memory_order_relaxed);
    uint64_t head = atomic_load_explicit(&header->head, memory_order_acquire);
    return capacity - (tail - head);
}

void parallelvm_ring_skip(void *ring, uint32_t length) {
    struct header *header = ring;
    uint64_t head = atomic_load_explicit(&header->head, memory_order_relaxed);
    atomic_store_explicit(&header->head, head + 4 + (uint64_t)length, memory_order_release);
}

void parallelvm_ring_set_waiting(void *ring, int waiting) {
    struct header *header = ring;
    atomic_store_explicit(&header->waiting, waiting ? 1u : 0u, memory_order_seq_cst);
    atomic_thread_fence(memory_order_seq_cst);
}

int parallelvm_ring_consumer_waiting(void *ring, int clear) {
    struct header *header = ring;
    if (atomic_load_explicit(&header->waiting, memory_order_seq_cst) == 0) return 0;
    if (!clear) return 1;
    return atomic_exchange_explicit(&header->waiting, 0u, memory_order_seq_cst) != 0;
}

int parallelvm_shared_memory_create(uint64_t size) {
    int fd = memfd_create("parallelvm-channel", MFD_CLOEXEC);
    if (fd < 0) return -1;
    if (ftruncate(fd, (off_t)size) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

void *parallelvm_shared_memory_map(int fd, uint64_t size) {
    void *memory = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    return memory == MAP_FAILED ? NULL : memory;
}

void parallelvm_shared_memory_unmap(void *memory, uint64_t size) { munmap(memory, size); }

uint64_t parallelvm_shared_load(void *word) {
    return atomic_load_explicit((_Atomic uint64_t *)word, memory_order_seq_cst);
}

void parallelvm_shared_store(void *word, uint64_t value) {
    atomic_store_explicit((_Atomic uint64_t *)word, value, memory_order_seq_cst);
}

int parallelvm_shared_compare_exchange(void *word, uint64_t expected, uint64_t desired) {
    return atomic_compare_exchange_strong_explicit((_Atomic uint64_t *)word, &expected, desired,
                                                   memory_order_seq_cst, memory_order_seq_cst);
}

int parallelvm_ring_write_piece(void *ring, uint64_t capacity, const void *bytes, uint32_t length, int first,
                                int more) {
    struct header *header = ring;
    uint64_t tail = atomic_load_explicit(&header->tail, memory_order_relaxed);
    uint64_t head = atomic_load_explicit(&header->head, memory_order_acquire);
    uint64_t needed = 4 + (uint64_t)length;
    if (length >= 0x40000000u || capacity - (tail - head) < needed) return 0;
    uint32_t word = length | (more ? 0x80000000u : 0) | (first ? 0x40000000u : 0);
    unsigned char prefix[4] = {
        (unsigned char)word, (unsigned char)(word >> 8), (unsigned char)(word >> 16), (unsigned char)(word >> 24),
    };
    copy_in(ring, capacity, tail, prefix, 4);
    if (length) copy_in(ring, capacity, tail + 4, bytes, length);
    atomic_store_explicit(&header->tail, tail + needed, memory_order_seq_cst);
    return 1;
}
