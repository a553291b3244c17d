using System.Reflection;
using Microsoft.ML.BootMae.Training;
using Microsoft.VisualStudio.TestTools.UnitTesting;

namespace Microsoft.ML.BootMae.Tests;

/// <summary>
/// The ML.NET Options and the engine settings by reflection: one default for every setting both declare, and every
/// public Options field either carried into the engine settings or listed below as consumed by the ML.NET layer itself.
/// A field added to one type and not the other, or not passed on, fails here.
/// </summary>
[TestClass]
public sealed class SettingsDefaultsTests
{
    // Same name in both types, different default on purpose.
    private static readonly Dictionary<string, string> PretrainingDifferences = new()
    {
        ["Seed"] = "null: the MLContext's seed, else BootMaeHost.DefaultSeed (checked equal to the engine's default below)",
        ["FallbackToCpu"] = "null: MLContext.FallbackToCpu when MLContext.GpuDeviceId is set, else true (the engine's default, checked below)",
        ["GpuDeviceId"] = "null: MLContext.GpuDeviceId when set, else 0 (the engine's default, checked below)",
    };

    private static readonly Dictionary<string, string> FineTuneDifferences = new()
    {
        ["Seed"] = "null: the MLContext's seed, else BootMaeHost.DefaultSeed; the internal engine's 0 is never used by the trainer",
        ["FallbackToCpu"] = "null: MLContext.FallbackToCpu when MLContext.GpuDeviceId is set, else true (the engine's default, checked below)",
        ["LayerDecay"] = "null: chosen from the pretrained encoder's depth (FineTuneSettings.AutoLayerDecay), 1 without one",
        ["Augment"] = "ML.NET augments while decoding (default on) and always passes the engine's on-device Augment as false; the engine's default off only matters to direct callers",
    };

    // Public Options fields that do not go into the engine settings, and where they go instead.
    private static readonly Dictionary<string, string> MlNetOnlyPretraining = new()
    {
        ["ImageColumnName"] = "the input column (ImageColumn.Resolve)",
        ["OutputColumnName"] = "the fitted transformer's column",
        ["Architecture"] = "the BootMaePretrainer constructor",
        ["CancellationToken"] = "BootMaePretrainer.Train (through TrainingCancellation)",
        ["MetricsCallback"] = "BootMaePretrainer.Train",
        ["LogCallback"] = "BootMaeLogger, whose Info is passed to BootMaePretrainer.Train",
        ["SkipBadImages"] = "DataViewImageBatchSource",
        ["MaxImagePixels"] = "DataViewImageBatchSource and the fitted transformer",
        ["ShufflePoolSize"] = "DataViewImageBatchSource",
        ["Augment"] = "decode-time augmentation in DataViewImageBatchSource; the engine's on-device Augment is always false",
        ["Pooling"] = "the fitted transformer",
        ["SourceBlock"] = "the fitted transformer",
        ["InferenceBatchSize"] = "the fitted transformer",
    };

    private static readonly Dictionary<string, string> MlNetOnlyFineTune = new()
    {
        ["ImageColumnName"] = "the input column (ImageColumn.Resolve)",
        ["LabelColumnName"] = "the label column",
        ["ScoreColumnName"] = "the fitted transformer's column",
        ["PredictedLabelColumnName"] = "the fitted transformer's column",
        ["Architecture"] = "the random encoder when Encoder is null",
        ["Encoder"] = "ImageClassifierEngine.Train",
        ["ValidationSet"] = "ImageClassifierEngine.Train (as a DataViewImageBatchSource)",
        ["GpuDeviceId"] = "TorchDevices.Resolve in the trainer, whose device is passed to ImageClassifierEngine.Train",
        ["NumberOfThreads"] = "TorchDevices.SetThreads, called by the trainer",
        ["CancellationToken"] = "ImageClassifierEngine.Train (through TrainingCancellation)",
        ["MetricsCallback"] = "ImageClassifierEngine.Train",
        ["LogCallback"] = "BootMaeLogger, whose Info is passed to ImageClassifierEngine.Train",
        ["SkipBadImages"] = "DataViewImageBatchSource",
        ["MaxImagePixels"] = "DataViewImageBatchSource and the fitted transformer",
        ["ShufflePoolSize"] = "DataViewImageBatchSource",
        ["Augment"] = "decode-time augmentation in DataViewImageBatchSource; the engine's on-device Augment is always false",
        ["InferenceBatchSize"] = "the fitted transformer",
    };

    private static readonly BootMaeArchitecture Tiny = PretrainerTests.Tiny;

    [TestMethod]
    public void PretrainingOptionsDefaultsAreTheEngineDefaults()
    {
        var compared = CompareDefaults(new BootMaePretrainingEstimator.Options(), new BootMaePretrainerSettings(), PretrainingDifferences);

        Assert.IsGreaterThan(35, compared, "settings declared in both");
        var options = new BootMaePretrainingEstimator.Options();
        var engine = new BootMaePretrainerSettings();
        var device = BootMaeHost.ResolveDevice(options, env: null);
        Assert.AreEqual(engine.Seed, BootMaeHost.ResolveSeed(options.Seed, env: null), "Seed null without an MLContext seed");
        Assert.AreEqual(engine.FallbackToCpu, device.FallbackToCpu, "FallbackToCpu null without MLContext.GpuDeviceId");
        Assert.AreEqual(engine.GpuDeviceId, device.GpuDeviceId, "GpuDeviceId null without MLContext.GpuDeviceId");
    }

    [TestMethod]
    public void FineTuningOptionsDefaultsAreTheEngineDefaults()
    {
        var compared = CompareDefaults(new BootMaeImageClassificationTrainer.Options(), new FineTuneSettings(), FineTuneDifferences);

        Assert.IsGreaterThan(20, compared, "settings declared in both");
        Assert.AreEqual(new FineTuneSettings().FallbackToCpu, BootMaeHost.ResolveDevice(new BootMaeImageClassificationTrainer.Options(), env: null).FallbackToCpu);
    }

    [TestMethod]
    public void CatalogDefaultsAreTheOptionsDefaults()
    {
        var ml = new MLContext(seed: 1);
        var pretrain = Options(ml.Transforms.BootMaePretrain());
        Assert.AreEqual(new BootMaePretrainingEstimator.Options().MaxEpochs, pretrain.MaxEpochs);
        Assert.AreEqual(new BootMaePretrainingEstimator.Options().BatchSize, pretrain.BatchSize);
        var classify = Options(ml.MulticlassClassification.Trainers.BootMaeImageClassification());
        Assert.AreEqual(new BootMaeImageClassificationTrainer.Options().MaxEpochs, classify.MaxEpochs);
        Assert.AreEqual(new BootMaeImageClassificationTrainer.Options().BatchSize, classify.BatchSize);
    }

    [TestMethod]
    public void EveryPretrainingOptionReachesTheEngineSettings()
    {
        using var encoder = BootMaeEncoder.CreateRandom(Tiny, seed: 2);
        var options = new BootMaePretrainingEstimator.Options();
        var carried = SetEveryFieldToAnotherValue(options, MlNetOnlyPretraining, encoder);

        var settings = BootMaePretrainingEstimator.ToSettings(options, BootMaeHost.ResolveSeed(options.Seed, env: null), BootMaeHost.ResolveDevice(options, env: null));

        AssertCarried(carried, settings, new BootMaePretrainerSettings());
        Assert.IsFalse(settings.Augment, "the ML.NET layer augments while decoding, never on the device as well");
    }

    [TestMethod]
    public void EveryFineTuningOptionReachesTheEngineSettings()
    {
        using var encoder = BootMaeEncoder.CreateRandom(Tiny, seed: 2);
        var options = new BootMaeImageClassificationTrainer.Options();
        var carried = SetEveryFieldToAnotherValue(options, MlNetOnlyFineTune, encoder);

        var settings = BootMaeImageClassificationTrainer.ToSettings(options, BootMaeHost.ResolveSeed(options.Seed, env: null), BootMaeHost.ResolveDevice(options, env: null));

        AssertCarried(carried, settings, new FineTuneSettings());
        Assert.IsFalse(settings.Augment, "the ML.NET layer augments while decoding, never on the device as well");
    }

    private static T Options<T>(object estimator) =>
        (T)estimator.GetType().GetField("_options", BindingFlags.Instance | BindingFlags.NonPublic)!.GetValue(estimator)!;

    private static BootMaePretrainingEstimator.Options Options(BootMaePretrainingEstimator estimator) => Options<BootMaePretrainingEstimator.Options>(estimator);

    private static BootMaeImageClassificationTrainer.Options Options(BootMaeImageClassificationTrainer trainer) => Options<BootMaeImageClassificationTrainer.Options>(trainer);

    // The engine's settings: public fields (BootMaePretrainerSettings) or public properties (FineTuneSettings).
    private static Dictionary<string, (Type Type, Func<object, object?> Get)> EngineMembers(Type type) =>
        type.GetFields(BindingFlags.Instance | BindingFlags.Public).Select(f => (f.Name, f.FieldType, (Func<object, object?>)f.GetValue))
            .Concat(type.GetProperties(BindingFlags.Instance | BindingFlags.Public).Where(p => p.CanRead && p.GetIndexParameters().Length == 0)
                .Select(p => (p.Name, p.PropertyType, (Func<object, object?>)p.GetValue)))
            .ToDictionary(m => m.Item1, m => (m.Item2, m.Item3));

    private static FieldInfo[] OptionFields(Type type) => type.GetFields(BindingFlags.Instance | BindingFlags.Public);

    private static int CompareDefaults(object options, object engine, Dictionary<string, string> differences)
    {
        var members = EngineMembers(engine.GetType());
        var shared = OptionFields(options.GetType()).Where(f => members.ContainsKey(f.Name)).ToList();
        foreach (var name in differences.Keys)
        {
            Assert.IsTrue(shared.Any(f => f.Name == name), $"the listed difference '{name}' is not a setting of both types any more; drop it from the list");
        }

        var mismatches = new List<string>();
        foreach (var field in shared)
        {
            object? mine = field.GetValue(options);
            object? theirs = members[field.Name].Get(engine);
            bool same = Equals(mine, theirs);
            if (differences.ContainsKey(field.Name))
            {
                Assert.IsFalse(same, $"'{field.Name}' is listed as an intentional difference but both defaults are {mine}; drop it from the list");
            }
            else if (!same)
            {
                mismatches.Add($"{field.Name}: Options {mine ?? "null"}, engine {theirs ?? "null"}");
            }
        }

        Assert.IsEmpty(mismatches, "defaults that disagree (put both in PretrainingDefaults/FineTuneDefaults, or list the difference with its reason):\n" + string.Join("\n", mismatches));
        return shared.Count;
    }

    // Sets each field the engine should receive to a value other than its default; returns those fields and values.
    private static List<(string Name, object? Value)> SetEveryFieldToAnotherValue(object options, Dictionary<string, string> mlNetOnly, BootMaeEncoder encoder)
    {
        var fields = OptionFields(options.GetType());
        foreach (var name in mlNetOnly.Keys)
        {
            Assert.IsTrue(fields.Any(f => f.Name == name), $"the ML.NET-only field '{name}' no longer exists; drop it from the list");
        }

        var carried = new List<(string, object?)>();
        foreach (var field in fields.Where(f => !mlNetOnly.ContainsKey(f.Name)))
        {
            object? value = AnotherValue(field.FieldType, field.GetValue(options), encoder);
            field.SetValue(options, value);
            carried.Add((field.Name, value));
        }

        return carried;
    }

    private static void AssertCarried(List<(string Name, object? Value)> carried, object settings, object engineDefaults)
    {
        var members = EngineMembers(settings.GetType());
        var missing = carried.Where(c => !members.ContainsKey(c.Name)).Select(c => c.Name).ToList();
        Assert.IsEmpty(missing, "public Options fields the engine settings do not declare (pass them on, or list where they go): " + string.Join(", ", missing));
        var lost = new List<string>();
        foreach (var (name, value) in carried)
        {
            object? actual = members[name].Get(settings);
            if (!Equals(value, actual))
            {
                lost.Add($"{name}: set {value ?? "null"}, engine got {actual ?? "null"}");
            }
            else
            {
                Assert.AreNotEqual(members[name].Get(engineDefaults), actual, $"{name}: the test value must differ from the engine's default to show it was carried");
            }
        }

        Assert.IsEmpty(lost, "Options fields not carried into the engine settings:\n" + string.Join("\n", lost));
    }

    private static object? AnotherValue(Type type, object? current, BootMaeEncoder encoder)
    {
        var underlying = Nullable.GetUnderlyingType(type) ?? type;
        if (underlying == typeof(bool))
        {
            return !(current as bool? ?? true);
        }

        if (underlying == typeof(int))
        {
            return (current as int? ?? 0) + 3;
        }

        if (underlying == typeof(long))
        {
            return (current as long? ?? 0) + 7;
        }

        if (underlying == typeof(double))
        {
            double d = current as double? ?? 0.9;
            return d == 0 ? 0.125 : d * 0.5;
        }

        if (underlying == typeof(string))
        {
            return Path.Combine(Path.GetTempPath(), "bootmae-not-written-" + (current ?? "x"));
        }

        if (underlying.IsEnum)
        {
            return Enum.GetValues(underlying).Cast<object>().First(v => !v.Equals(current));
        }

        if (underlying == typeof(BootMaeEncoder))
        {
            return encoder;
        }

        throw new AssertFailedException($"No test value for a field of type {type}; extend AnotherValue.");
    }
}
