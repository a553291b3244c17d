using System.Text.Json;
using System.Xml.Linq;
using Microsoft.ML.BootMae.Benchmarks;
using Microsoft.VisualStudio.TestTools.UnitTesting;

namespace Microsoft.ML.BootMae.SamplesTests;

/// <summary>The benchmark's <c>evaluate --plots</c> charts, drawn from the rows kept in docs/data/evaluation.</summary>
[TestClass]
public sealed class EvaluationPlotsTests
{
    private static readonly XNamespace Svg = "http://www.w3.org/2000/svg";

    private string _folder = string.Empty;

    [TestInitialize]
    public void CreateFolder() => _folder = Path.Combine(Path.GetTempPath(), $"bootmae-plots-{Guid.NewGuid():N}");

    [TestCleanup]
    public void DeleteFolder()
    {
        if (Directory.Exists(_folder))
        {
            Directory.Delete(_folder, recursive: true);
        }
    }

    [TestMethod]
    public void ChartsOfTheKeptRowsShowEverySeriesAndReference()
    {
        var written = EvaluationPlots.Write(KeptRows(), _folder);

        CollectionAssert.AreEqual(
            new[] { "results-pretraining-minutes.svg", "results-pretraining-steps.svg", "results-labels.svg" },
            written.Select(Path.GetFileName).ToArray());

        var minutes = Texts(written[0]);
        Assert.Contains("Accuracy against pretraining time", minutes);
        foreach (var legend in new[] { "BootMAE, linear probe (best block)", "BootMAE, fine-tune, 100 labels", "BootMAE, fine-tune, 1,000 labels", "MAE, linear probe (best block)", "MAE, fine-tune, 100 labels" })
        {
            Assert.Contains(legend, minutes);
        }

        // The references need no pretraining: mean over the two seeds (tuned probe 81.1 / 80.8 and 74.5 / 74.3; 61.6 / 59.9).
        Assert.Contains("raw pixels, linear model: 81.0%", minutes);
        Assert.Contains("from scratch, 100 labels, equal fine-tune epochs: 60.7%", minutes);
        Assert.Contains("random init, linear probe (best block): 74.4%", minutes);
        Assert.Contains("pretraining steps", Texts(written[1]));

        var labels = Texts(written[2]);
        foreach (var legend in new[] { "BootMAE, fine-tune", "MAE, fine-tune", "from scratch, equal fine-tune epochs", "from scratch, equal total steps", "raw pixels, linear model" })
        {
            Assert.Contains(legend, labels);
        }

        // The longest pretraining of each method, named in the subtitle; the accuracy axis reaches the lowest seed
        // (59.9%) and stops short of 50.
        Assert.IsTrue(labels.Any(t => t.Contains("BootMAE 2,100 steps, MAE 2,300 steps", StringComparison.Ordinal)), string.Join(" | ", labels));
        Assert.Contains("55", minutes);
        Assert.DoesNotContain("50", minutes);
    }

    private static List<string> Texts(string svg) =>
        XDocument.Load(svg).Descendants(Svg + "text").Select(t => t.Value).ToList();

    private static List<EvaluationRow> KeptRows()
    {
        var folder = Path.Combine(RepoRoot(), "docs", "data", "evaluation");
        return Directory.GetFiles(folder, "*.jsonl").Order(StringComparer.Ordinal)
            .SelectMany(File.ReadAllLines).Where(l => l.Length > 0).Select(l => JsonSerializer.Deserialize<EvaluationRow>(l)!).ToList();
    }

    private static string RepoRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "Microsoft.ML.BootMae.sln")))
            {
                return dir.FullName;
            }
        }

        throw new InvalidOperationException($"No folder above '{AppContext.BaseDirectory}' holds Microsoft.ML.BootMae.sln.");
    }
}
