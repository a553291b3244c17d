namespace Microsoft.ML.BootMae;

/// <summary>
/// The input normalisation an encoder's weights expect: pixels are scaled to [0, 1] and then each channel c becomes
/// (x − Mean[c]) / Std[c]. Part of <see cref="BootMaeArchitecture"/>, so it is saved with every encoder, classifier,
/// checkpoint and ONNX model, and every path (featurize, fine-tune, pretraining, ONNX) applies the same one.
/// </summary>
/// <remarks>
/// Give one value per channel, or a single value that applies to every channel. Equality compares the values.
/// BootMAE and BEiT were pretrained with <see cref="BootMae"/>; MAE, DeiT and most ImageNet-1k timm models with
/// <see cref="ImageNet"/>; Google's ViT and timm's augreg models with <see cref="BootMae"/>'s 0.5 / 0.5.
/// </remarks>
public sealed record BootMaeNormalization
{
    // Copied in and wrapped on the way out, so a shared preset cannot be changed through a cast.
    private readonly double[] _mean = [0.5];
    private readonly double[] _std = [0.5];

    /// <summary>mean = std = 0.5 for every channel, so pixels lie in [-1, 1]: BootMAE's and BEiT's pretraining. The default.</summary>
    public static BootMaeNormalization BootMae { get; } = new();

    /// <summary>The ImageNet RGB statistics, mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225): MAE's, DeiT's and torchvision's.</summary>
    public static BootMaeNormalization ImageNet { get; } = new() { Mean = [0.485, 0.456, 0.406], Std = [0.229, 0.224, 0.225] };

    /// <summary>Per-channel means subtracted from [0, 1] pixels: one value, or one per channel. Default [0.5].</summary>
    public IReadOnlyList<double> Mean
    {
        get => Array.AsReadOnly(_mean);
        init => _mean = (value ?? throw new ArgumentNullException(nameof(Mean))).ToArray();
    }

    /// <summary>Per-channel standard deviations the centred pixels are divided by: one value, or one per channel. Default [0.5].</summary>
    public IReadOnlyList<double> Std
    {
        get => Array.AsReadOnly(_std);
        init => _std = (value ?? throw new ArgumentNullException(nameof(Std))).ToArray();
    }

    /// <summary>True when every channel uses the same mean and the same std.</summary>
    internal bool IsUniform => _mean.All(m => m.Equals(_mean[0])) && _std.All(s => s.Equals(_std[0]));

    /// <summary>True for 0.5 / 0.5 on every channel, computed as x·2 − 1 (bit-identical with earlier releases).</summary>
    internal bool IsBootMae => IsUniform && _mean[0] == 0.5 && _std[0] == 0.5;

    /// <summary>The mean of channel <paramref name="c"/>.</summary>
    internal double MeanOf(int c) => _mean.Length == 1 ? _mean[0] : _mean[c];

    /// <summary>The std of channel <paramref name="c"/>.</summary>
    internal double StdOf(int c) => _std.Length == 1 ? _std[0] : _std[c];

    /// <summary>Checks the values against a channel count; throws <see cref="ArgumentException"/> naming the problem.</summary>
    /// <param name="channels">The encoder's channel count (1 or 3).</param>
    public void Validate(int channels)
    {
        if ((_mean.Length != 1 && _mean.Length != channels) || (_std.Length != 1 && _std.Length != channels))
        {
            throw new ArgumentException(
                $"BootMaeArchitecture.Normalization: Mean has {_mean.Length} and Std {_std.Length} values, but the encoder has {channels} channel(s): give one value per channel or a single value for all.");
        }

        if (_mean.Any(m => !double.IsFinite(m)) || _std.Any(s => !double.IsFinite(s) || s <= 0))
        {
            throw new ArgumentException($"BootMaeArchitecture.Normalization: means must be finite and stds finite and positive (got {this}).");
        }
    }

    /// <inheritdoc />
    public bool Equals(BootMaeNormalization? other) =>
        other is not null && _mean.SequenceEqual(other._mean) && _std.SequenceEqual(other._std);

    /// <inheritdoc />
    public override int GetHashCode()
    {
        var hash = default(HashCode);
        foreach (var m in _mean)
        {
            hash.Add(m);
        }

        foreach (var s in _std)
        {
            hash.Add(s);
        }

        return hash.ToHashCode();
    }

    /// <summary>For messages and logs: <c>mean [0.485, 0.456, 0.406], std [0.229, 0.224, 0.225]</c>.</summary>
    public override string ToString() =>
        $"mean [{string.Join(", ", _mean.Select(m => m.ToString("R", System.Globalization.CultureInfo.InvariantCulture)))}], " +
        $"std [{string.Join(", ", _std.Select(s => s.ToString("R", System.Globalization.CultureInfo.InvariantCulture)))}]";
}
