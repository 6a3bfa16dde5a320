// Float64 references for the matmul family: plain loops, written to be read, not to be fast.

/** y[T,N] = x[T,K] · W[N,K]ᵀ */
export function matmulRef(x: ArrayLike<number>, w: ArrayLike<number>, T: number, K: number, N: number): Float64Array {
  const y = new Float64Array(T * N);
  for (let t = 0; t < T; t++)
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += x[t * K + k]! * w[n * K + k]!;
      y[t * N + n] = s;
    }
  return y;
}

/** dx[T,K] = dy[T,N] · W[N,K] */
export function matmulGradInputRef(dy: ArrayLike<number>, w: ArrayLike<number>, T: number, K: number, N: number): Float64Array {
  const dx = new Float64Array(T * K);
  for (let t = 0; t < T; t++)
    for (let k = 0; k < K; k++) {
      let s = 0;
      for (let n = 0; n < N; n++) s += dy[t * N + n]! * w[n * K + k]!;
      dx[t * K + k] = s;
    }
  return dx;
}

/** dW[N,K] = dy[T,N]ᵀ · x[T,K] */
export function matmulGradWeightRef(dy: ArrayLike<number>, x: ArrayLike<number>, T: number, K: number, N: number): Float64Array {
  const dw = new Float64Array(N * K);
  for (let n = 0; n < N; n++)
    for (let k = 0; k < K; k++) {
      let s = 0;
      for (let t = 0; t < T; t++) s += dy[t * N + n]! * x[t * K + k]!;
      dw[n * K + k] = s;
    }
  return dw;
}
