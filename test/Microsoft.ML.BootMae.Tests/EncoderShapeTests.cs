using Microsoft.ML.BootMae.Modules;
using Microsoft.ML.Data;
using Microsoft.ML.BootMae.Training;
using Microsoft.VisualStudio.TestTools.UnitTesting;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Tests;

/// <summary>Compatibility checks compare the encoder's shape only: an encoder pretrained with other decoders fits.</summary>
[TestClass]
public sealed class EncoderShapeTests
{
    // The run's shape, and the same encoder under decoders of another width, head count, depth and injection blocks.
    private static readonly BootMaeArchitecture Run = PretrainerTests.Tiny;

    private static readonly BootMaeArchitecture OtherDecoders = Run with
    {
        RegressorDim = 16, RegressorHeads = 1, PredictorHeads = 1, DecoderDepth = 2, ShallowBlock = 1, DeepBlock = 0,
    };

    private static BootMaePretrainerSettings Settings() => new()
    {
        MaxEpochs = 1, MaxSteps = 1, BatchSize = 4, Seed = 3, Device = BootMaeDevice.Cpu, Precision = BootMaePrecision.Float32, Augment = false,
    };

    private static InMemoryImageSource Source() => new(Enumerable.Range(0, 8 * 28 * 28).Select(i => (i % 97) / 97f).ToArray(), null, 8, 1, 28, 1, shuffle: false);

    private static Dictionary<string, float[]> Weights(nn.Module module)
    {
        using var scope = NewDisposeScope();
        return module.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.detach().cpu().contiguous().data<float>().ToArray());
    }

    private static void AssertSameWeights(Dictionary<string, float[]> expected, nn.Module actual, string what)
    {
        var weights = Weights(actual);
        Assert.HasCount(expected.Count, weights, what);
        foreach (var (key, value) in expected)
        {
            CollectionAssert.AreEqual(value, weights[key], $"{what}: {key}");
        }
    }

    [TestMethod]
    public void EncoderShapeLeavesTheDecodersOut()
    {
        Assert.AreNotEqual(Run, OtherDecoders);
        Assert.AreEqual(Run.EncoderShape, OtherDecoders.EncoderShape);
        Assert.AreNotEqual(Run.EncoderShape, (Run with { Heads = 1 }).EncoderShape);
        Assert.AreNotEqual(Run.EncoderShape, (Run with { Normalization = BootMaeNormalization.ImageNet with { Mean = [0.4], Std = [0.2] } }).EncoderShape);
        StringAssert.DoesNotMatch(System.Text.Json.JsonSerializer.Serialize(Run), new System.Text.RegularExpressions.Regex("EncoderShape"), "derived, so not written into files");
    }

    [TestMethod]
    public void EncoderPretrainedWithOtherDecodersIsTakenAsInitialEncoderAndAsFrozenTeacher()
    {
        using var pretrained = BootMaeEncoder.CreateRandom(OtherDecoders, seed: 8);
        var expected = Weights(pretrained.Module);
        var settings = Settings();
        settings.InitialEncoder = pretrained;
        settings.Teacher = BootMaeTeacher.Frozen;
        settings.TeacherEncoder = pretrained;
        Dictionary<string, float[]>? student = null;
        MomentumTeacher? teacher = null;
        var hooks = new PretrainingHooks
        {
            InitializeNetwork = network => student = Weights(network.Encoder),
            AfterStep = trace =>
            {
                teacher = trace.Teacher;
                AssertSameWeights(expected, trace.Teacher!.Encoder, "the frozen teacher holds TeacherEncoder's weights");
            },
        };

        using var trained = new BootMaePretrainer(Run, settings) { Hooks = hooks }.Train(Source());

        Assert.IsNotNull(student);
        Assert.IsNotNull(teacher, "a step ran");
        foreach (var (key, value) in expected)
        {
            CollectionAssert.AreEqual(value, student[key], $"the student starts from InitialEncoder's {key}");
        }

        Assert.AreEqual(Run, trained.Architecture, "the result carries the run's decoders");
    }

    [TestMethod]
    public void EncoderPretrainedWithOtherDecodersClassifies()
    {
        using var files = new MlNetTestData();
        using var pretrained = BootMaeEncoder.CreateRandom(MlNetTestData.Tiny8 with { RegressorDim = 32, DecoderDepth = 3 }, seed: 1);
        var ml = new MLContext(1);
        var data = ml.Transforms.Conversion.MapValueToKey("Label")
            .Append(ml.Transforms.LoadRawImageBytes("Image", files.Folder, "ImagePath"))
            .Fit(files.ColourRows(ml, 4)).Transform(files.ColourRows(ml, 4));
        var trainer = ml.MulticlassClassification.Trainers.BootMaeImageClassification(new BootMaeImageClassificationTrainer.Options
        {
            Encoder = pretrained, Architecture = MlNetTestData.Tiny8, MaxEpochs = 1, BatchSize = 2, Seed = 1, Augment = false,
        });

        using var model = trainer.Fit(data);

        var scores = model.Transform(data).GetColumn<float[]>("Score").ToList();
        Assert.HasCount(4, scores);
        Assert.IsTrue(scores.All(s => s.Length == 3 && Math.Abs(s.Sum() - 1) < 1e-4), "one probability for each of the 3 classes");
    }

    [TestMethod]
    [DataRow("EmbedDim")]
    [DataRow("Depth")]
    [DataRow("PatchSize")]
    public void AnotherEncoderShapeIsRefusedNamingTheMember(string member)
    {
        var other = member switch
        {
            "EmbedDim" => Run with { EmbedDim = 64 },
            "Depth" => Run with { Depth = 3 },
            _ => Run with { PatchSize = 14 },
        };
        using var wrong = BootMaeEncoder.CreateRandom(other, seed: 1);
        var expected = member switch
        {
            "EmbedDim" => "EmbedDim 64 ≠ 32",
            "Depth" => "Depth 3 ≠ 2",
            _ => "PatchSize 14 ≠ 7",
        };

        var initial = Settings();
        initial.InitialEncoder = wrong;
        var ex = Assert.ThrowsExactly<ArgumentException>(() => new BootMaePretrainer(Run, initial));
        StringAssert.Contains(ex.Message, "InitialEncoder's weights do not fit the run's encoder");
        StringAssert.Contains(ex.Message, expected);

        var frozen = Settings();
        frozen.Teacher = BootMaeTeacher.Frozen;
        frozen.TeacherEncoder = wrong;
        StringAssert.Contains(Assert.ThrowsExactly<ArgumentException>(() => new BootMaePretrainer(Run, frozen)).Message, "TeacherEncoder's weights do not fit");

        var ml = new MLContext(1);
        ex = Assert.ThrowsExactly<ArgumentException>(() => ml.Transforms.BootMaePretrain(new BootMaePretrainingEstimator.Options { InitialEncoder = wrong, Architecture = Run }));
        StringAssert.Contains(ex.Message, expected);
        ex = Assert.ThrowsExactly<ArgumentException>(() => ml.MulticlassClassification.Trainers.BootMaeImageClassification(
            new BootMaeImageClassificationTrainer.Options { Encoder = wrong, Architecture = Run }));
        StringAssert.Contains(ex.Message, "Encoder's weights do not fit Architecture");
        StringAssert.Contains(ex.Message, expected);
    }
}
