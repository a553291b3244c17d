using Microsoft.ML.BootMae;

namespace BootMae.Samples;

/// <summary>Network shapes the samples offer by name.</summary>
public static class SampleArchitectures
{
    /// <summary>The names <see cref="FromName"/> accepts.</summary>
    public static IReadOnlyList<string> Names { get; } = ["small28", "tiny28", "small32", "vit-tiny16", "vit-small16", "vit-base16"];

    /// <summary>The preset called <paramref name="name"/> (see <see cref="Names"/>).</summary>
    public static BootMaeArchitecture FromName(string name) => name.ToLowerInvariant() switch
    {
        "small28" => BootMaeArchitecture.Small28,
        "tiny28" => BootMaeArchitecture.Tiny28,
        "small32" => BootMaeArchitecture.Small32,
        "vit-tiny16" => BootMaeArchitecture.VitTiny16,
        "vit-small16" => BootMaeArchitecture.VitSmall16,
        "vit-base16" => BootMaeArchitecture.VitBase16,
        _ => throw new SampleUsageException($"Unknown preset '{name}': use one of {string.Join(", ", Names)}."),
    };

    /// <summary>One line describing the shape.</summary>
    public static string Describe(BootMaeArchitecture a) =>
        $"{a.ImageSize}x{a.ImageSize}x{a.Channels}, patch {a.PatchSize}, D {a.EmbedDim}, depth {a.Depth}, {a.Heads} heads, regressor {a.RegressorDim}";
}
