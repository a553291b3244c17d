using Microsoft.VisualStudio.TestTools.UnitTesting;

namespace Microsoft.ML.BootMae.Tests;

[TestClass]
public sealed class ClassificationValidationTests
{
    private static IDataView Prepare(MLContext ml, MlNetTestData files, IDataView rows, IDataView? keyData = null) =>
        ml.Transforms.Conversion.MapValueToKey("Label", keyData: keyData)
            .Append(ml.Transforms.LoadRawImageBytes("Image", files.Folder, "ImagePath"))
            .Fit(rows).Transform(rows);

    [TestMethod]
    public void ZeroRowsFailBeforeTraining()
    {
        using var files = new MlNetTestData();
        using var encoder = BootMaeEncoder.CreateRandom(MlNetTestData.Tiny8, seed: 1);
        var ml = new MLContext(1);
        var data = Prepare(ml, files, files.ColourRows(ml, 3));
        var empty = ml.Data.SkipRows(data, 100);
        var trainer = ml.MulticlassClassification.Trainers.BootMaeImageClassification(encoder: encoder, maxEpochs: 1);
        var ex = Assert.ThrowsExactly<InvalidOperationException>(() => trainer.Fit(empty));
        StringAssert.Contains(ex.Message, "no rows");
    }

    [TestMethod]
    public void ValidationSetWithOtherClassesIsRejected()
    {
        using var files = new MlNetTestData();
        using var encoder = BootMaeEncoder.CreateRandom(MlNetTestData.Tiny8, seed: 1);
        var ml = new MLContext(1);
        var train = Prepare(ml, files, files.ColourRows(ml, 3));
        var validation = Prepare(ml, files, MlNetTestData.Rows(ml, new[] { (files.WriteColour("v.png"), "a"), (files.WriteColour("w.png"), "b") }));
        var trainer = ml.MulticlassClassification.Trainers.BootMaeImageClassification(new BootMaeImageClassificationTrainer.Options
        {
            Encoder = encoder, MaxEpochs = 1, ValidationSet = validation,
        });
        var ex = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => trainer.Fit(train));
        StringAssert.Contains(ex.Message, "same MapValueToKey");
    }

    [TestMethod]
    public void BadImagesAreSkippedAndReportedDuringFit()
    {
        using var files = new MlNetTestData();
        using var encoder = BootMaeEncoder.CreateRandom(MlNetTestData.Tiny8, seed: 1);
        var ml = new MLContext(1);
        var rows = MlNetTestData.Rows(ml, new[]
        {
            (files.WriteColour("a.png"), "a"), (files.WriteColour("b.png", shift: 5), "b"), (files.WriteBad("broken.png"), "a"),
            (files.WriteColour("c.png", shift: 9), "b"),
        });
        var lines = new List<string>();
        var trainer = ml.MulticlassClassification.Trainers.BootMaeImageClassification(new BootMaeImageClassificationTrainer.Options
        {
            Encoder = encoder, MaxEpochs = 1, BatchSize = 2, SkipBadImages = true, LogCallback = lines.Add, Seed = 1,
        });
        using var model = trainer.Fit(Prepare(ml, files, rows));
        Assert.IsTrue(lines.Any(l => l.Contains("skipped 1", StringComparison.Ordinal) && l.Contains("could not be decoded", StringComparison.Ordinal)), string.Join("\n", lines));

        var failing = ml.MulticlassClassification.Trainers.BootMaeImageClassification(new BootMaeImageClassificationTrainer.Options
        {
            Encoder = encoder, MaxEpochs = 1, BatchSize = 2, Seed = 1,
        });
        var ex = Assert.ThrowsExactly<InvalidDataException>(() => failing.Fit(Prepare(ml, files, rows)));
        StringAssert.Contains(ex.Message, "broken.png");
    }

    [TestMethod]
    public void InvalidOptionsFailWhenTheTrainerIsCreated()
    {
        var ml = new MLContext(1);
        // Training settings fail in their one Validate, with ArgumentException naming the setting; ML.NET settings as before.
        var epochs = Assert.ThrowsExactly<ArgumentException>(() => ml.MulticlassClassification.Trainers.BootMaeImageClassification(maxEpochs: 0));
        Assert.AreEqual("MaxEpochs", epochs.ParamName);
        var patience = Assert.ThrowsExactly<ArgumentException>(() => ml.MulticlassClassification.Trainers.BootMaeImageClassification(
            new BootMaeImageClassificationTrainer.Options { Training = { EarlyStoppingPatience = 0 } }));
        Assert.AreEqual("EarlyStoppingPatience", patience.ParamName);
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => ml.MulticlassClassification.Trainers.BootMaeImageClassification(
            new BootMaeImageClassificationTrainer.Options { InferenceBatchSize = 0 }));
        Assert.ThrowsExactly<ArgumentException>(() => ml.Transforms.BootMaePretrain(
            new BootMaePretrainingEstimator.Options { ResumeFromCheckpoint = true }));
        var preview = Assert.ThrowsExactly<ArgumentException>(() => ml.Transforms.BootMaePretrain(
            new BootMaePretrainingEstimator.Options { ReconstructionPreviewCount = 0 }));
        Assert.AreEqual("ReconstructionPreviewCount", preview.ParamName);
        var jitter = Assert.ThrowsExactly<ArgumentException>(() => ml.Transforms.BootMaePretrain(
            new BootMaePretrainingEstimator.Options { Training = { MaskJitter = -1 } }));
        StringAssert.Contains(jitter.Message, "MaskJitter is -1");
        using var encoder = BootMaeEncoder.CreateRandom(MlNetTestData.Tiny8, seed: 1);
        Assert.ThrowsExactly<ArgumentException>(() => ml.MulticlassClassification.Trainers.BootMaeImageClassification(
            new BootMaeImageClassificationTrainer.Options { Encoder = encoder, Architecture = MlNetTestData.Tiny8Grey }));
    }
}
