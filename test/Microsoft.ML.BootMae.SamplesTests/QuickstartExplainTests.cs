using BootMae.Samples.Quickstart;
using Microsoft.VisualStudio.TestTools.UnitTesting;

namespace Microsoft.ML.BootMae.SamplesTests;

/// <summary>The Quickstart's "What the numbers mean": the gains it states are the table's, signed and rounded.</summary>
[TestClass]
public sealed class QuickstartExplainTests
{
    [TestMethod]
    public void GainsAreTheTablesDifferencesWithTheirSign()
    {
        // The figures of a measured run (docs/results.md, "The Quickstart"): with 100 labels the pretrained run tied
        // the equal-steps baseline to within 0.05 points and lost to the equal-epochs one.
        var text = Explain(
            Row("BootMAE pretrain + fine-tune", 1000, 0.741), Row("From scratch, same epochs", 1000, 0.715), Row("From scratch, same total steps", 1000, 0.778),
            Row("BootMAE pretrain + fine-tune", 100, 0.613), Row("From scratch, same epochs", 100, 0.620), Row("From scratch, same total steps", 100, 0.6128),
            Row("BootMAE pretrain + linear probe", 1000, 0.742), Row("Random encoder + linear probe", 1000, 0.722));

        StringAssert.Contains(text, "1,000 labels: pretraining gives +2.6 points against the same fine-tuning from a random encoder; -3.7 points against");
        StringAssert.Contains(text, "100 labels: pretraining gives -0.7 points against the same fine-tuning from a random encoder; +0.0 points against");
        StringAssert.Contains(text, "the pretrained features score +2.0 points");
        Assert.DoesNotContain("-+", text, "a gap that rounds to zero is printed as +0.0");
        Assert.DoesNotContain("frozen features are no easier", text, "the probe gained 2 points");
    }

    [TestMethod]
    public void AProbeWithoutGainIsSaidToBeNoBetter()
    {
        var text = Explain(Row("BootMAE pretrain + linear probe", 1000, 0.72), Row("Random encoder + linear probe", 1000, 0.72));

        StringAssert.Contains(text, "the pretrained features score +0.0 points");
        StringAssert.Contains(text, "frozen features are no easier to separate linearly");
    }

    private static QuickstartResult Row(string method, int labels, double accuracy) =>
        new(method, labels, Steps: 1, accuracy, accuracy, TimeSpan.Zero);

    private static string Explain(params QuickstartResult[] rows)
    {
        using var output = new StringWriter();
        QuickstartSample.Explain(output, rows);
        return output.ToString();
    }
}
