using BootMae.Samples;
using BootMae.Samples.BringYourOwnImages;
using BootMae.Samples.DeployOnnx;
using BootMae.Samples.Featurize;
using BootMae.Samples.Quickstart;
using Microsoft.VisualStudio.TestTools.UnitTesting;

namespace Microsoft.ML.BootMae.SamplesTests;

/// <summary>Each sample end to end with a tiny network and a handful of images (a few seconds each).</summary>
[TestClass]
[DoNotParallelize]
public sealed class SampleSmokeTests
{
    private static readonly BootMaeArchitecture Tiny = BootMaeArchitecture.Small28 with
    {
        PatchSize = 7, EmbedDim = 32, Depth = 2, Heads = 2, RegressorDim = 16, RegressorHeads = 2, PredictorHeads = 2, DecoderDepth = 1,
    };

    private string _folder = string.Empty;

    [TestInitialize]
    public void CreateFolder()
    {
        _folder = Path.Combine(Path.GetTempPath(), $"bootmae-samples-{Guid.NewGuid():N}");
        Directory.CreateDirectory(_folder);
    }

    [TestCleanup]
    public void DeleteFolder()
    {
        try
        {
            Directory.Delete(_folder, recursive: true);
        }
        catch (IOException)
        {
            // Best effort.
        }
    }

    [TestMethod]
    public void QuickstartComparesAtEqualStepsAndWritesPicturesAndModel()
    {
        var output = new StringWriter();
        var results = QuickstartSample.Run(new QuickstartSettings
        {
            OutputDirectory = _folder, Architecture = Tiny, TrainPerClass = 4, LabelledPerClass = 2, FewLabelledPerClass = 1, TestPerClass = 2,
            PretrainEpochs = 1, FineTuneEpochs = 2, FewLabelFineTuneEpochs = 2, BatchSize = 8,
        }, output);

        // Fine-tune, scratch at equal epochs and scratch at equal total steps, for 20 and for 10 labels; then the probes of
        // the pretrained and of a random encoder.
        Assert.HasCount(8, results, output.ToString());
        var byRow = results.ToDictionary(r => (r.Method, r.LabelsUsed));
        foreach (int labels in new[] { 20, 10 })
        {
            var pretrained = byRow[("BootMAE pretrain + fine-tune", labels)];
            var sameEpochs = byRow[("From scratch, same epochs", labels)];
            var sameSteps = byRow[("From scratch, same total steps", labels)];
            Assert.AreEqual(pretrained.Steps, sameSteps.Steps, $"{labels} labels: scratch gets the steps of pretraining plus fine-tuning");
            Assert.IsLessThan(pretrained.Steps, sameEpochs.Steps, $"{labels} labels: equal epochs means only the fine-tuning steps");
        }

        // Tiny runs on 20 test images are at chance (measured 0.05–0.30), so only the accuracies' form is checked: each is
        // a count of the 20 test images.
        Assert.IsTrue(results.All(r => r.Accuracy is >= 0 and <= 1 && Math.Abs((r.Accuracy * 20) - Math.Round(r.Accuracy * 20)) < 1e-9), output.ToString());
        StringAssert.Contains(output.ToString(), "What the numbers mean");
        StringAssert.Contains(output.ToString(), "linear probe: the pretrained features score");
        Assert.AreEqual(byRow[("BootMAE pretrain + fine-tune", 20)].Steps - byRow[("From scratch, same epochs", 20)].Steps, byRow[("BootMAE pretrain + linear probe", 20)].Steps,
            "the probe's steps are the pretraining's: the linear model is fitted by L-BFGS, not by steps");
        foreach (var file in new[] { "masks.png", "reconstructions.png", "pretraining-curves.png", "model.zip", "encoder.bootmae" })
        {
            Assert.IsTrue(File.Exists(Path.Combine(_folder, file)), file);
        }

        StringAssert.Contains(output.ToString(), "| method");
        StringAssert.Contains(output.ToString(), "Reloaded model.zip");
    }

    [TestMethod]
    public void DeployOnnxExportsAndServesThroughMlNetWithTorchSharpsPredictions()
    {
        var output = new StringWriter();
        var result = DeployOnnxSample.Run(DeployOnnxSettings.Quick with { OutputDirectory = _folder, Architecture = Tiny, TrainPerClass = 4, TestPerClass = 2 }, output);
        Assert.AreEqual(20, result.TestImages, output.ToString());
        Assert.AreEqual(1.0, result.Agreement, output.ToString());
        Assert.IsLessThanOrEqualTo(1e-4, result.MaxScoreDifference, output.ToString());
        Assert.IsTrue(File.Exists(result.OnnxPath) && File.Exists(result.ModelZipPath));
        StringAssert.Contains(output.ToString(), "ONNX pipeline vs TorchSharp on 20 test images: same class on 100.0 %");
    }

    [TestMethod]
    public void FeaturizeTrainsOnEmbeddingsAndFindsNeighboursFromASavedEncoder()
    {
        var encoderPath = Path.Combine(_folder, "encoder.bootmae");
        using (var encoder = BootMaeEncoder.CreateRandom(Tiny, seed: 3))
        {
            encoder.Save(encoderPath);
        }

        var output = new StringWriter();
        var result = FeaturizeSample.Run(new FeaturizeSettings
        {
            EncoderPath = encoderPath, OutputDirectory = _folder, TrainPerClass = 5, TestPerClass = 3, Queries = 2, Neighbours = 3,
        }, output);

        // Random-encoder features + SDCA on 30 test images (chance 0.1): measured 0.33; a zeroed encoder gives 0.10. The
        // neighbour agreement of 2 queries × 3 neighbours is too few to beat chance (measured 1/6).
        Assert.IsGreaterThanOrEqualTo(0.2, result.Accuracy, output.ToString());
        Assert.IsTrue(result.NeighbourLabelAgreement is >= 0 and <= 1);
        Assert.IsTrue(File.Exists(result.PicturePath));
        StringAssert.Contains(output.ToString(), "->");
    }

    [TestMethod]
    public void FeaturizePretrainsWhenNoEncoderIsGiven()
    {
        var output = new StringWriter();
        var result = FeaturizeSample.Run(new FeaturizeSettings
        {
            Architecture = Tiny, PretrainEpochs = 1, OutputDirectory = _folder, TrainPerClass = 3, TestPerClass = 2, Queries = 1, Neighbours = 2,
        }, output);

        StringAssert.Contains(output.ToString(), "pretrain epoch   1/1");
        Assert.IsTrue(File.Exists(result.PicturePath));
    }

    [TestMethod]
    public void BringYourOwnImagesPretrainsFineTunesSavesAndPredicts()
    {
        var images = Path.Combine(_folder, "images");
        ByoiSample.MakeExample(images, trainPerClass: 5, TextWriter.Null);
        var train = Path.Combine(images, "train");
        Assert.HasCount(10, Directory.GetDirectories(train));
        var pretrainModel = Path.Combine(_folder, "pretrained.zip");
        ByoiSample.Run(new ByoiSettings
        {
            ImageDirectory = train, Mode = "pretrain", Unlabeled = true, Architecture = Tiny, Epochs = 1, BatchSize = 8, ModelPath = pretrainModel,
        }, TextWriter.Null);
        var encoder = Path.ChangeExtension(pretrainModel, ".encoder.bootmae");
        Assert.IsTrue(File.Exists(encoder));

        var newImages = Directory.GetFiles(Path.Combine(images, "new"));
        var classifier = Path.Combine(_folder, "classifier.zip");
        var output = new StringWriter();
        var predictions = ByoiSample.Run(new ByoiSettings
        {
            ImageDirectory = train, EncoderPath = encoder, Epochs = 1, BatchSize = 8, ModelPath = classifier, Predict = newImages,
        }, output);
        Assert.HasCount(newImages.Length, predictions, output.ToString());
        StringAssert.Contains(output.ToString(), "Held-out accuracy");

        var again = ByoiSample.Run(new ByoiSettings { ModelPath = classifier, Predict = newImages.Take(2).ToArray() }, TextWriter.Null);
        CollectionAssert.AreEqual(predictions.Take(2).Select(p => p.Label).ToArray(), again.Select(p => p.Label).ToArray(), "predict-only reloads the same model");
    }

    [TestMethod]
    public void BringYourOwnImagesExplainsBadInput()
    {
        string Message(ByoiSettings settings) => Assert.ThrowsExactly<SampleUsageException>(() => ByoiSample.Run(settings, TextWriter.Null)).Message;

        StringAssert.Contains(Message(new ByoiSettings { ImageDirectory = Path.Combine(_folder, "missing") }), "does not exist");
        var empty = Directory.CreateDirectory(Path.Combine(_folder, "empty")).FullName;
        File.WriteAllText(Path.Combine(empty, "notes.txt"), "not an image");
        StringAssert.Contains(Message(new ByoiSettings { ImageDirectory = empty }), ".png .jpg");

        var images = Path.Combine(_folder, "images");
        ByoiSample.MakeExample(images, trainPerClass: 1, TextWriter.Null);
        var oneClass = Path.Combine(images, "train", "Bag");
        Assert.IsTrue(Directory.Exists(oneClass));
        var single = Directory.CreateDirectory(Path.Combine(_folder, "single", "Bag")).FullName;
        foreach (var file in Directory.GetFiles(oneClass))
        {
            File.Copy(file, Path.Combine(single, Path.GetFileName(file)));
        }

        StringAssert.Contains(Message(new ByoiSettings { ImageDirectory = Path.GetDirectoryName(single) }), "at least two classes");
        StringAssert.Contains(Message(new ByoiSettings { ImageDirectory = oneClass }), "--mode pretrain");
        StringAssert.Contains(Message(new ByoiSettings { ImageDirectory = images, Mode = "pretrain", Predict = Directory.GetFiles(oneClass) }), "needs a classifier");
        StringAssert.Contains(Message(new ByoiSettings { ImageDirectory = images, Predict = ["nope.png"] }), "no file");
        StringAssert.Contains(Message(new ByoiSettings()), "--images DIR is required");
        StringAssert.Contains(Assert.ThrowsExactly<SampleUsageException>(() => SampleArchitectures.FromName("huge")).Message, "small28");
    }
}
