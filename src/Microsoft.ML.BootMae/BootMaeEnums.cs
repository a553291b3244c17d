namespace Microsoft.ML.BootMae;

/// <summary>Where BootMAE runs its tensors.</summary>
public enum BootMaeDevice
{
    /// <summary>CUDA when a GPU and a CUDA runtime package are present, otherwise the CPU.</summary>
    Auto,

    /// <summary>The CPU (TorchSharp-cpu or any runtime).</summary>
    Cpu,

    /// <summary>An NVIDIA GPU through TorchSharp-cuda-linux; see docs/gpu.md.</summary>
    Cuda,
}

/// <summary>How the encoder's token outputs become one feature vector per image.</summary>
public enum BootMaePooling
{
    /// <summary>Mean of the patch tokens (cls excluded), as the paper's fine-tuning does. Output <c>Vector&lt;Single, D&gt;</c>.</summary>
    Mean,

    /// <summary>The cls token. Output <c>Vector&lt;Single, D&gt;</c>.</summary>
    Cls,

    /// <summary>Every patch token, for dense tasks. Output <c>Vector&lt;Single, N, D&gt;</c>.</summary>
    Tokens,
}

/// <summary>Numeric precision of matrix work.</summary>
public enum BootMaePrecision
{
    /// <summary>Everything in 32-bit floats.</summary>
    Float32,

    /// <summary>bfloat16 where it is safe: the momentum teacher in pretraining, the whole encoder for inference.
    /// Master weights stay in 32-bit. Falls back to <see cref="Float32"/> on hardware without fast bfloat16.</summary>
    BFloat16,

    /// <summary>
    /// Mixed-precision training: as <see cref="BFloat16"/>, and the student (in pretraining and fine-tuning) computes its
    /// matrix products (linear layers, attention, patch embedding, pixel head) in bfloat16 from 32-bit master weights,
    /// whose gradients and optimizer state stay 32-bit, as do LayerNorm, softmax statistics and the losses (PyTorch's
    /// bf16 autocast; docs/gpu.md). Falls back to <see cref="Float32"/> on hardware without fast bfloat16. For
    /// inference (the featurizer) it means the same as <see cref="BFloat16"/>.
    /// </summary>
    BFloat16Mixed,
}

/// <summary>Pretraining objective: BootMAE, or plain MAE as a baseline.</summary>
public enum BootMaeMode
{
    /// <summary>BootMAE: pixel regressor with shallow injection plus feature predictor with deep injection, targets from a momentum encoder.</summary>
    BootMae,

    /// <summary>Plain MAE (He et al.): random masking, pixel target, an 8-block decoder, no teacher.</summary>
    Mae,
}

/// <summary>How the momentum teacher's features are normalised into the feature-prediction target.</summary>
public enum BootMaeFeatureTargetNormalization
{
    /// <summary>
    /// Each channel is first standardised over all tokens of the batch (mean 0, variance 1), then each token gets the
    /// parameter-free LayerNorm. On small patch grids the sin-cos position table puts most of the residual stream's
    /// energy in one component shared by every token and image; LayerNorm alone then leaves a target that is nearly the
    /// same everywhere and teaches only positional means. Standardising first (as data2vec does) removes that shared
    /// component. The default: it measured better on Fashion-MNIST (docs/results.md).
    /// </summary>
    BatchStandardized,

    /// <summary>The parameter-free LayerNorm of each token only (the paper and the official code).</summary>
    LayerNorm,
}
