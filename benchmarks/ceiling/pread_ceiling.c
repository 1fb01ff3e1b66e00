/* The physical ceiling for batched random reads: a plain C loop that preads
 * exactly the offsets a benchmark asks for, with nothing else in the way.
 *
 *   pread_ceiling FILE OPS THREADS BATCH [direct]
 *
 * OPS is a binary file of little-endian records {u64 offset, u64 length,
 * u64 tag}: the reads in order. Each batch of BATCH reads lands back to back
 * in one buffer that the thread allocates once and reuses (what any batch
 * reader must at least do: hold a whole batch at once). With THREADS > 1 the
 * reads are split into contiguous, disjoint parts, one per thread.
 *
 * Every read is checked: it must return exactly `length` bytes, and a record
 * of at least 8 bytes must start with its 8-byte `tag`. With `direct` the file
 * is opened with O_DIRECT and each read is widened to 4 KiB boundaries.
 *
 * Prints one JSON object: {"records", "bytes", "seconds", "errors"}.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define ALIGN 4096u

struct op { uint64_t offset, length, tag; };

struct part {
  int fd;
  int direct;
  const struct op* ops;
  size_t n, batch;
  uint64_t bytes, errors;
  uint8_t* buf;
};

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int read_exact(int fd, uint8_t* dst, uint64_t len, uint64_t off, uint64_t need) {
  uint64_t got = 0;
  while (got < len) {
    ssize_t r = pread(fd, dst + got, len - got, (off_t)(off + got));
    if (r < 0) { if (errno == EINTR) continue; return -1; }
    if (r == 0) break;
    got += (uint64_t)r;
  }
  return got >= need ? 0 : -1;
}

/* The batch buffer: sized for the largest batch, allocated and touched
 * before the clock starts. */
static int alloc_buffer(struct part* p) {
  uint64_t cap = ALIGN;
  for (size_t b = 0; b < p->n; b += p->batch) {
    uint64_t sum = 0;
    for (size_t i = b; i < p->n && i < b + p->batch; ++i) sum += p->ops[i].length + 2 * ALIGN;
    if (sum > cap) cap = sum;
  }
  if (posix_memalign((void**)&p->buf, ALIGN, cap) != 0) return -1;
  memset(p->buf, 0, cap);
  return 0;
}

static void* run(void* arg) {
  struct part* p = arg;
  uint8_t* buf = p->buf;
  for (size_t b = 0; b < p->n; b += p->batch) {
    uint64_t pos = 0;
    for (size_t i = b; i < p->n && i < b + p->batch; ++i) {
      const struct op* o = &p->ops[i];
      uint8_t* rec;
      int rc;
      if (p->direct) {
        uint64_t a = o->offset / ALIGN * ALIGN;
        uint64_t end = (o->offset + o->length + ALIGN - 1) / ALIGN * ALIGN;
        rc = o->length ? read_exact(p->fd, buf + pos, end - a, a, o->offset + o->length - a) : 0;
        rec = buf + pos + (o->offset - a);
        pos += end - a;
      } else {
        rc = read_exact(p->fd, buf + pos, o->length, o->offset, o->length);
        rec = buf + pos;
        pos += o->length;
      }
      if (rc != 0 || (o->length >= 8 && memcmp(rec, &o->tag, 8) != 0)) p->errors++;
      p->bytes += o->length;
    }
  }
  return NULL;
}

int main(int argc, char** argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: %s FILE OPS THREADS BATCH [direct]\n", argv[0]);
    return 2;
  }
  int direct = argc > 5 && strcmp(argv[5], "direct") == 0;
  int threads = atoi(argv[3]);
  size_t batch = (size_t)atol(argv[4]);
  if (threads < 1 || threads > 64 || batch < 1) { fprintf(stderr, "bad THREADS or BATCH\n"); return 2; }

  FILE* f = fopen(argv[2], "rb");
  if (!f) { perror(argv[2]); return 1; }
  struct stat st;
  fstat(fileno(f), &st);
  size_t n = (size_t)st.st_size / sizeof(struct op);
  struct op* ops = malloc(n * sizeof(struct op) + 1);
  if (fread(ops, sizeof(struct op), n, f) != n) { fprintf(stderr, "short ops file\n"); return 1; }
  fclose(f);

  int fd = open(argv[1], O_RDONLY | (direct ? O_DIRECT : 0));
  if (fd < 0) { perror(argv[1]); return 1; }
  posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);

  struct part parts[64];
  pthread_t tids[64];
  for (int t = 0; t < threads; ++t) {
    size_t lo = n * t / threads, hi = n * (t + 1) / threads;
    parts[t] = (struct part){fd, direct, ops + lo, hi - lo, batch, 0, 0, NULL};
    if (alloc_buffer(&parts[t]) != 0) { fprintf(stderr, "out of memory\n"); return 1; }
  }
  double t0 = now();
  for (int t = 0; t < threads; ++t) pthread_create(&tids[t], NULL, run, &parts[t]);
  uint64_t bytes = 0, errors = 0;
  for (int t = 0; t < threads; ++t) {
    pthread_join(tids[t], NULL);
    bytes += parts[t].bytes;
    errors += parts[t].errors;
    free(parts[t].buf);
  }
  double secs = now() - t0;
  printf("{\"records\": %zu, \"bytes\": %llu, \"seconds\": %.6f, \"errors\": %llu}\n", n,
         (unsigned long long)bytes, secs, (unsigned long long)errors);
  close(fd);
  free(ops);
  return errors ? 3 : 0;
}
