/*
 * allreduce: the time of one MPI_Allreduce (sum of doubles) over all ranks, for 8 bytes and
 * 1 MiB, averaged over many calls after a warm-up; rank 0 prints
 *   allreduce 8 B: T us
 *   allreduce 1048576 B: T us
 * bench/slurm.sh builds it with the image's mpicc and with the host's, and compares the two.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

static double timed(double *in, double *out, int count, int iterations)
{
    int i;
    double start;
    for (i = 0; i < 10; i++)
        MPI_Allreduce(in, out, count, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    MPI_Barrier(MPI_COMM_WORLD);
    start = MPI_Wtime();
    for (i = 0; i < iterations; i++)
        MPI_Allreduce(in, out, count, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    return (MPI_Wtime() - start) / iterations;
}

int main(int argc, char **argv)
{
    const int big = (1 << 20) / (int)sizeof(double);
    int rank, i;
    double *in, *out, t;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    in = malloc(big * sizeof(double));
    out = malloc(big * sizeof(double));
    if (in == NULL || out == NULL)
        MPI_Abort(MPI_COMM_WORLD, 1);
    for (i = 0; i < big; i++)
        in[i] = rank + i;
    t = timed(in, out, 1, 5000);
    if (rank == 0)
        printf("allreduce 8 B: %.2f us\n", t * 1e6);
    t = timed(in, out, big, 400);
    if (rank == 0)
        printf("allreduce %d B: %.2f us\n", big * (int)sizeof(double), t * 1e6);
    free(in);
    free(out);
    MPI_Finalize();
    return 0;
}
