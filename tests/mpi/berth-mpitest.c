/*
 * berth-mpitest: a small MPI check for container images, plain C and MPI-3 calls only, so it builds
 * with any MPI (Open MPI, MPICH and its ABI family).
 *
 *   mpicc -O2 -o berth-mpitest berth-mpitest.c
 *   mpirun -n 2 ./berth-mpitest            # or: srun -n 2 --container=img berth-mpitest
 *
 * Prints one "rank R/N on HOST" line per rank (which node each rank landed on, the first thing
 * to look at when a containerised job misbehaves), then:
 *   - ring:      a token passed once around all ranks, checked at rank 0;
 *   - allreduce: sum of 1..N, checked on every rank;
 *   - ping-pong between ranks 0 and 1: latency (8 bytes) and bandwidth (1 MiB..4 MiB).
 * Exit status 0 when every check passes, 1 otherwise (so `%test` and CI can use it).
 *
 * Options: -q (quick: fewer iterations), -h.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int check_ring(int rank, int size)
{
    int token = 0;
    int next = (rank + 1) % size, prev = (rank + size - 1) % size;
    if (size == 1)
        return 1;
    if (rank == 0) {
        token = 1;
        MPI_Send(&token, 1, MPI_INT, next, 10, MPI_COMM_WORLD);
        MPI_Recv(&token, 1, MPI_INT, prev, 10, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        /* every other rank added one */
        if (token != size) {
            fprintf(stderr, "ring: token came back as %d, expected %d\n", token, size);
            return 0;
        }
        printf("ring: token passed through %d ranks: ok\n", size);
    } else {
        MPI_Recv(&token, 1, MPI_INT, prev, 10, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        token += 1;
        MPI_Send(&token, 1, MPI_INT, next, 10, MPI_COMM_WORLD);
    }
    return 1;
}

static int check_allreduce(int rank, int size)
{
    long mine = rank + 1, sum = 0, expected = (long)size * (size + 1) / 2;
    MPI_Allreduce(&mine, &sum, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
    if (sum != expected) {
        fprintf(stderr, "allreduce: rank %d got %ld, expected %ld\n", rank, sum, expected);
        return 0;
    }
    if (rank == 0)
        printf("allreduce: sum over %d ranks = %ld: ok\n", size, sum);
    return 1;
}

/* Round trips of `bytes` between ranks 0 and 1; returns the seconds for one round trip. */
static double pingpong(int rank, char *buf, int bytes, int iterations)
{
    int i;
    double start;
    MPI_Barrier(MPI_COMM_WORLD);
    start = MPI_Wtime();
    for (i = 0; i < iterations; i++) {
        if (rank == 0) {
            MPI_Send(buf, bytes, MPI_CHAR, 1, 20, MPI_COMM_WORLD);
            MPI_Recv(buf, bytes, MPI_CHAR, 1, 20, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        } else if (rank == 1) {
            MPI_Recv(buf, bytes, MPI_CHAR, 0, 20, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            MPI_Send(buf, bytes, MPI_CHAR, 0, 20, MPI_COMM_WORLD);
        }
    }
    return (MPI_Wtime() - start) / iterations;
}

static int check_pingpong(int rank, int size, int quick)
{
    const int max_bytes = 4 << 20;
    int bytes, ok = 1;
    char *buf;
    if (size < 2) {
        if (rank == 0)
            printf("ping-pong: skipped (needs 2 ranks)\n");
        return 1;
    }
    buf = malloc(max_bytes);
    if (buf == NULL) {
        fprintf(stderr, "ping-pong: out of memory\n");
        return 0;
    }
    memset(buf, rank == 0 ? 'a' : 'b', max_bytes);
    {
        double rtt = pingpong(rank, buf, 8, quick ? 100 : 10000);
        if (rank == 0)
            printf("ping-pong latency: %.2f us (8 bytes, half round trip)\n", rtt * 1e6 / 2);
    }
    for (bytes = 1 << 20; bytes <= max_bytes; bytes <<= 1) {
        double rtt = pingpong(rank, buf, bytes, quick ? 5 : 50);
        if (rank == 0)
            printf("ping-pong bandwidth: %.1f MB/s (%d bytes)\n", 2.0 * bytes / rtt / 1e6, bytes);
    }
    /* The payload must have made it across intact. */
    if (rank == 0 && buf[max_bytes - 1] != 'a') {
        fprintf(stderr, "ping-pong: payload corrupted\n");
        ok = 0;
    }
    free(buf);
    return ok;
}

int main(int argc, char **argv)
{
    int rank, size, len, i, quick = 0, ok = 1, all_ok = 0;
    char host[MPI_MAX_PROCESSOR_NAME];

    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-q") == 0) {
            quick = 1;
        } else if (strcmp(argv[i], "-h") == 0) {
            if (rank == 0)
                printf("usage: berth-mpitest [-q]\n");
            MPI_Finalize();
            return 0;
        }
    }
    memset(host, 0, sizeof host);
    MPI_Get_processor_name(host, &len);

    /* Rank 0 prints every placement line: output forwarded from several ranks interleaves in
     * any order, gathered lines read the same every time. */
    {
        char *all = rank == 0 ? malloc((size_t)size * MPI_MAX_PROCESSOR_NAME) : NULL;
        if (rank == 0 && all == NULL) {
            fprintf(stderr, "out of memory\n");
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
        MPI_Gather(host, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, all, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, 0, MPI_COMM_WORLD);
        if (rank == 0) {
            for (i = 0; i < size; i++)
                printf("rank %d/%d on %s\n", i, size, all + (size_t)i * MPI_MAX_PROCESSOR_NAME);
            free(all);
        }
    }
    if (rank == 0) {
        char version[MPI_MAX_LIBRARY_VERSION_STRING];
        int vlen;
        MPI_Get_library_version(version, &vlen);
        /* first line only: Open MPI's string is multi-line */
        version[strcspn(version, "\n")] = '\0';
        printf("mpi: %s\n", version);
    }

    ok &= check_ring(rank, size);
    ok &= check_allreduce(rank, size);
    ok &= check_pingpong(rank, size, quick);

    MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_LAND, MPI_COMM_WORLD);
    if (rank == 0) {
        printf("berth-mpitest: %s\n", all_ok ? "all checks passed" : "FAILED");
        fflush(stdout);
    }
    MPI_Finalize();
    return all_ok ? 0 : 1;
}
