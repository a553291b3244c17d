namespace Microsoft.ML.BootMae.Benchmarks;

/// <summary>
/// The <see cref="BootMaeArchitecture"/> presets the commands take by name, in one table so that every
/// <c>--preset</c> option, its help and its errors agree.
/// </summary>
internal static class Presets
{
    /// <summary>Every preset, by its command-line name.</summary>
    public static readonly (string Name, BootMaeArchitecture Value)[] All =
    [
        ("tiny28", BootMaeArchitecture.Tiny28), ("small28", BootMaeArchitecture.Small28),
        ("small32", BootMaeArchitecture.Small32), ("vitb16", BootMaeArchitecture.VitBase16),
    ];

    /// <summary>The presets for 28×28 greyscale images: the commands that read Fashion-MNIST take only these.</summary>
    public static readonly (string Name, BootMaeArchitecture Value)[] Greyscale28 =
        All.Where(p => p.Value.ImageSize == 28 && p.Value.Channels == 1).ToArray();

    /// <summary>The preset called <paramref name="name"/> (case-insensitive).</summary>
    public static BootMaeArchitecture ByName(string name)
    {
        foreach (var (n, value) in All)
        {
            if (string.Equals(n, name, StringComparison.OrdinalIgnoreCase))
            {
                return value;
            }
        }

        throw new ArgumentException($"Unknown preset '{name}': use {Names(All)}.");
    }

    /// <summary>The names of <paramref name="presets"/>, for messages ("a, b or c").</summary>
    public static string Names((string Name, BootMaeArchitecture Value)[] presets) =>
        presets.Length == 1 ? presets[0].Name : string.Join(", ", presets[..^1].Select(p => p.Name)) + " or " + presets[^1].Name;
}
