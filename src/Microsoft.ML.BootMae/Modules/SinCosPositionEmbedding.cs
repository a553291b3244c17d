using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Modules;

// Fixed 2-D sin-cos position table (spec §2.1), MoCo-v3 order: [sin(iω), cos(iω), sin(jω), cos(jω)] for the patch at
// (row i, col j), ω_k = 10000^(−k/q), q = D/4. Row 0 (cls) is zero. Built in .NET and turned into one tensor.
internal static class SinCosPositionEmbedding
{
    public static float[] Table(int gridSize, int dim, double temperature = 10000.0)
    {
        if (dim % 4 != 0)
        {
            throw new ArgumentException($"Width {dim} must be divisible by 4 for a 2-D sin-cos table.", nameof(dim));
        }

        int q = dim / 4;
        int n = gridSize * gridSize;
        var table = new float[(n + 1) * dim];
        var omega = new double[q];
        for (int k = 0; k < q; k++)
        {
            // Computed in float32 like the reference so the table matches bit-for-bit where it can.
            omega[k] = 1.0f / MathF.Pow((float)temperature, (float)k / q);
        }

        for (int i = 0; i < gridSize; i++)
        {
            for (int j = 0; j < gridSize; j++)
            {
                int row = 1 + (i * gridSize) + j;
                int baseIndex = row * dim;
                for (int k = 0; k < q; k++)
                {
                    float ai = (float)(i * (float)omega[k]);
                    float aj = (float)(j * (float)omega[k]);
                    table[baseIndex + k] = MathF.Sin(ai);
                    table[baseIndex + q + k] = MathF.Cos(ai);
                    table[baseIndex + (2 * q) + k] = MathF.Sin(aj);
                    table[baseIndex + (3 * q) + k] = MathF.Cos(aj);
                }
            }
        }

        return table;
    }

    // A frozen 1×(1+N)×D parameter (requires_grad false), so its state_dict key matches the reference.
    public static TorchSharp.Modules.Parameter CreateParameter(int gridSize, int dim)
    {
        var data = tensor(Table(gridSize, dim), new long[] { 1, (gridSize * gridSize) + 1, dim });
        return new TorchSharp.Modules.Parameter(data, requires_grad: false);
    }
}
