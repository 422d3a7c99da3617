#include <mpi.h>
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int rank, size, sum = 0;
    char net[64] = "";
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    ssize_t n = readlink("/proc/self/ns/net", net, sizeof net - 1);
    if (n > 0) net[n] = 0;
    printf("MPI rank %d of %d sum %d %s\n", rank, size, sum, net);
    MPI_Finalize();
    return sum == size * (size - 1) / 2 ? 0 : 1;
}
