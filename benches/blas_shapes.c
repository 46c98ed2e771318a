// Times cblas_sgemm (2 threads: set the library's own variable) on the MiniLM
// train step's GEMM shapes, best of >= 0.5 s and 5 runs each, in GFLOP/s.
// Built and run by benches/blas_shapes.sh.
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <string.h>
enum {RowMajor=101, NoTrans=111, Trans=112};
void cblas_sgemm(int,int,int,int,int,int,float,const float*,int,const float*,int,float,float*,int);
static double now(){struct timespec t; clock_gettime(CLOCK_MONOTONIC,&t); return t.tv_sec+t.tv_nsec*1e-9;}
int main(int argc,char**argv){
  int shapes[][5]={ // M N K ta tb
    {1536,384,384,0,1},{1536,1536,384,0,1},{1536,384,1536,0,1},
    {1536,384,384,0,0},{1536,384,1536,0,0},{1536,1536,384,0,0},
    {384,384,384,0,1},{384,1536,384,0,1},{384,384,1536,0,1},
    {1024,1024,1024,0,0}};
  int ns=sizeof shapes/sizeof shapes[0];
  float *a=malloc(4*2048*2048),*b=malloc(4*2048*2048),*c=malloc(4*2048*2048);
  for(int i=0;i<2048*2048;i++){a[i]=(i%7)*0.1f;b[i]=(i%5)*0.1f;}
  for(int s=0;s<ns;s++){
    int M=shapes[s][0],N=shapes[s][1],K=shapes[s][2],ta=shapes[s][3],tb=shapes[s][4];
    int lda=ta?M:K, ldb=tb?K:N;
    double best=1e9; int reps=0; double t0=now();
    while(now()-t0<0.5 || reps<5){double t=now();
      cblas_sgemm(RowMajor,ta?Trans:NoTrans,tb?Trans:NoTrans,M,N,K,1.f,a,lda,b,ldb,0.f,c,N);
      t=now()-t; if(t<best)best=t; reps++;}
    printf("%5d %5d %5d %c%c  %7.1f GFLOP/s\n",M,N,K,ta?'T':'N',tb?'T':'N',2.0*M*N*K/best/1e9);
  }
}
