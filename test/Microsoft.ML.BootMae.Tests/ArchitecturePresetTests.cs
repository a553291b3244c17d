using System.Globalization;
using System.Reflection;
using System.Text.RegularExpressions;
using Microsoft.VisualStudio.TestTools.UnitTesting;

namespace Microsoft.ML.BootMae.Tests;

/// <summary>
/// Every preset on <see cref="BootMaeArchitecture"/>, found by reflection: it validates, and docs/api.md's preset table
/// has a row for it with the same numbers, so a preset added or changed without its documentation fails here.
/// </summary>
[TestClass]
public sealed partial class ArchitecturePresetTests
{
    private static IEnumerable<(string Name, BootMaeArchitecture Preset)> Presets() =>
        typeof(BootMaeArchitecture).GetProperties(BindingFlags.Public | BindingFlags.Static)
            .Where(p => p.PropertyType == typeof(BootMaeArchitecture))
            .Select(p => (p.Name, (BootMaeArchitecture)p.GetValue(null)!));

    // | `Name` | image | patch | C | D | depth | heads | regressor dim / heads | predictor heads |
    [GeneratedRegex(@"^\| `(?<name>\w+)` \| (?<cells>[^\n]+) \|$", RegexOptions.Multiline)]
    private static partial Regex PresetRow();

    [GeneratedRegex(@"\s+")]
    private static partial Regex Whitespace();

    [TestMethod]
    public void EveryPresetValidatesAndHasItsRowInTheApiDocs()
    {
        // The preset table only: other tables of api.md list members by name too.
        string api = File.ReadAllText(Path.Combine(DocSnippetTests.RepoRoot(), "docs", "api.md")).ReplaceLineEndings("\n");
        int start = api.IndexOf("| Preset |", StringComparison.Ordinal);
        Assert.IsGreaterThanOrEqualTo(0, start, "docs/api.md has no preset table (a header row starting '| Preset |')");
        int end = api.IndexOf("\n\n", start, StringComparison.Ordinal);
        string table = end < 0 ? api[start..] : api[start..end];
        var rows = PresetRow().Matches(table).ToDictionary(m => m.Groups["name"].Value, m => m.Groups["cells"].Value);
        var presets = Presets().ToList();
        Assert.IsGreaterThanOrEqualTo(7, presets.Count, "VitTiny16 … Small32 and Small28");
        Assert.HasCount(presets.Count, rows, "one row per preset, and no row for a preset that is gone");

        foreach (var (name, a) in presets)
        {
            a.Validate();
            Assert.IsTrue(rows.TryGetValue(name, out var cells), $"docs/api.md has no preset row for BootMaeArchitecture.{name}");
            string expected = string.Create(CultureInfo.InvariantCulture,
                $"{a.ImageSize} | {a.PatchSize} | {a.Channels} | {a.EmbedDim} | {a.Depth} | {a.Heads} | {a.RegressorDim} / {a.RegressorHeads} | {a.PredictorHeads}");
            Assert.AreEqual(expected, cells, $"docs/api.md's row for {name}");
            Assert.AreEqual(name == nameof(BootMaeArchitecture.Small28) ? 1 : 2, a.DecoderDepth, $"{name}: the table's note says every preset but Small28 has DecoderDepth 2");
            Assert.AreEqual(0, a.ShallowBlock, $"{name}: ShallowBlock 0");
            Assert.IsNull(a.DeepBlock, $"{name}: DeepBlock null (the last block), so `with {{ Depth = … }}` stays valid");
        }
    }

    [TestMethod]
    public void Small28IsTheShapeOfTheMeasuredResults()
    {
        // docs/results.md states this shape for every table; the benchmarks and samples take it from the preset.
        var a = BootMaeArchitecture.Small28;
        Assert.AreEqual((28, 4, 1, 128, 4, 4), (a.ImageSize, a.PatchSize, a.Channels, a.EmbedDim, a.Depth, a.Heads));
        Assert.AreEqual((64, 4, 4, 1), (a.RegressorDim, a.RegressorHeads, a.PredictorHeads, a.DecoderDepth));
        string results = Whitespace().Replace(File.ReadAllText(Path.Combine(DocSnippetTests.RepoRoot(), "docs", "results.md")), " ");
        StringAssert.Contains(results, "`BootMaeArchitecture.Small28` (28×28 grey, patch 4, a 7×7 grid, D 128, 4 blocks, 4 heads, pixel regressor and feature predictor of width 64)");
        StringAssert.Contains(results, "Its decoders have one block each since \"Decoder depth\" below; every run before that section used two");
    }
}
