using System.Reflection;
using Microsoft.ML.BootMae.Training;
using Microsoft.VisualStudio.TestTools.UnitTesting;

namespace Microsoft.ML.BootMae.Tests;

/// <summary>
/// The ML.NET Options and the settings models they carry, by reflection: every public Options member is either a
/// pass-through to <c>Options.Training</c> (same name, same type, both directions) or listed below as an ML.NET concern
/// with where it goes; every training setting set on <c>Options.Training</c> reaches the settings the engine runs with,
/// except the few the ML.NET layer resolves itself (listed with their reasons). A member added to the Options and not
/// passed on, or a settings field the run copy loses, fails here.
/// </summary>
[TestClass]
public sealed class SettingsDefaultsTests
{
    // Public members of BootMaeTrainingOptionsBase that are not training settings, and where they go instead.
    private static readonly Dictionary<string, string> MlNetOnlyShared = new()
    {
        ["Training"] = "the carried settings themselves",
        ["ImageColumnName"] = "the input column (ImageColumn.Resolve)",
        ["Seed"] = "null: the MLContext's seed, else BootMaeHost.DefaultSeed; written into the run's copy of Training",
        ["Device"] = "resolved with the MLContext's GpuDeviceId; written into the run's copy of Training",
        ["FallbackToCpu"] = "null: MLContext.FallbackToCpu when MLContext.GpuDeviceId is set, else true; written into the run's copy",
        ["CancellationToken"] = "the engine's Train (through TrainingCancellation)",
        ["MetricsCallback"] = "the engine's Train",
        ["LogCallback"] = "BootMaeLogger, whose Info is passed to the engine's Train",
        ["SkipBadImages"] = "DataViewImageBatchSource",
        ["MaxImagePixels"] = "DataViewImageBatchSource and the fitted transformer",
        ["ShufflePoolSize"] = "DataViewImageBatchSource",
        ["Augment"] = "decode-time augmentation in DataViewImageBatchSource; the engine's on-device Augment is always false",
        ["InferenceBatchSize"] = "the fitted transformer",
    };

    private static readonly Dictionary<string, string> MlNetOnlyPretraining = With(MlNetOnlyShared, new()
    {
        ["OutputColumnName"] = "the fitted transformer's column",
        ["Architecture"] = "the BootMaePretrainer constructor",
        ["GpuDeviceId"] = "null: MLContext.GpuDeviceId when set, else 0; written into the run's copy of Training",
        ["Pooling"] = "the fitted transformer",
        ["SourceBlock"] = "the fitted transformer",
    });

    private static readonly Dictionary<string, string> MlNetOnlyFineTune = With(MlNetOnlyShared, new()
    {
        ["LabelColumnName"] = "the label column",
        ["ScoreColumnName"] = "the fitted transformer's column",
        ["PredictedLabelColumnName"] = "the fitted transformer's column",
        ["Architecture"] = "the random encoder when Encoder is null",
        ["Encoder"] = "ImageClassifierEngine.Train",
        ["ValidationSet"] = "ImageClassifierEngine.Train (as a DataViewImageBatchSource)",
        ["GpuDeviceId"] = "TorchDevices.Resolve in the trainer, whose device is passed to ImageClassifierEngine.Train",
    });

    // Settings fields the ML.NET layer replaces in the run's copy, with what it puts there.
    private static readonly Dictionary<string, string> ResolvedFineTune = new()
    {
        ["Seed"] = "Options.Seed or the MLContext's",
        ["Device"] = "Options.Device with the MLContext's GpuDeviceId",
        ["FallbackToCpu"] = "Options.FallbackToCpu or the MLContext's",
        ["Augment"] = "false: the ML.NET layer augments while decoding",
    };

    private static readonly Dictionary<string, string> ResolvedPretraining = With(ResolvedFineTune, new()
    {
        ["GpuDeviceId"] = "Options.GpuDeviceId or the MLContext's",
    });

    private static readonly BootMaeArchitecture Tiny = PretrainerTests.Tiny;

    [TestMethod]
    public void PretrainingOptionsPassEveryTrainingSettingThrough()
    {
        using var encoder = BootMaeEncoder.CreateRandom(Tiny, seed: 2);
        int forwarded = AssertPassThrough(new BootMaePretrainingEstimator.Options(), o => ((BootMaePretrainingEstimator.Options)o).Training, MlNetOnlyPretraining, encoder);

        Assert.IsGreaterThan(35, forwarded, "the training settings the Options have always exposed");
    }

    [TestMethod]
    public void FineTuningOptionsPassEveryTrainingSettingThrough()
    {
        using var encoder = BootMaeEncoder.CreateRandom(Tiny, seed: 2);
        int forwarded = AssertPassThrough(new BootMaeImageClassificationTrainer.Options(), o => ((BootMaeImageClassificationTrainer.Options)o).Training, MlNetOnlyFineTune, encoder);

        Assert.IsGreaterThan(20, forwarded, "the training settings the Options have always exposed");
    }

    [TestMethod]
    public void MlNetResolvedDefaultsAreTheEngineDefaults()
    {
        var options = new BootMaePretrainingEstimator.Options();
        var engine = new BootMaePretrainerSettings();
        var device = BootMaeHost.ResolveDevice(options, env: null);
        Assert.AreEqual(engine.Seed, BootMaeHost.ResolveSeed(options.Seed, env: null), "Seed null without an MLContext seed");
        Assert.AreEqual(engine.FallbackToCpu, device.FallbackToCpu, "FallbackToCpu null without MLContext.GpuDeviceId");
        Assert.AreEqual(engine.GpuDeviceId, device.GpuDeviceId, "GpuDeviceId null without MLContext.GpuDeviceId");
        Assert.AreEqual(engine.Device, device.Device);
        Assert.AreEqual(new FineTuneSettings().FallbackToCpu, BootMaeHost.ResolveDevice(new BootMaeImageClassificationTrainer.Options(), env: null).FallbackToCpu);
    }

    [TestMethod]
    public void CatalogDefaultsAreTheOptionsDefaults()
    {
        var ml = new MLContext(seed: 1);
        var pretrain = Options(ml.Transforms.BootMaePretrain());
        Assert.AreEqual(new BootMaePretrainerSettings().MaxEpochs, pretrain.MaxEpochs);
        Assert.AreEqual(new BootMaePretrainerSettings().BatchSize, pretrain.BatchSize);
        var classify = Options(ml.MulticlassClassification.Trainers.BootMaeImageClassification());
        Assert.AreEqual(new FineTuneSettings().MaxEpochs, classify.MaxEpochs);
        Assert.AreEqual(new FineTuneSettings().BatchSize, classify.BatchSize);
    }

    [TestMethod]
    public void EveryPretrainingSettingReachesTheRun()
    {
        using var encoder = BootMaeEncoder.CreateRandom(Tiny, seed: 2);
        var options = new BootMaePretrainingEstimator.Options();
        var carried = SetEveryMemberToAnotherValue(options.Training, ResolvedPretraining, encoder);
        options.Seed = 17;
        options.Device = BootMaeDevice.Cpu;

        var run = BootMaePretrainingEstimator.RunSettings(options, BootMaeHost.ResolveSeed(options.Seed, env: null), BootMaeHost.ResolveDevice(options, env: null));

        Assert.AreNotSame(options.Training, run, "the run completes a copy, never the user's settings");
        AssertCarried(carried, run, new BootMaePretrainerSettings());
        Assert.IsFalse(run.Augment, "the ML.NET layer augments while decoding, never on the device as well");
        Assert.AreEqual(17, run.Seed);
        Assert.AreEqual(BootMaeDevice.Cpu, run.Device);
        Assert.IsTrue(options.Training.Augment, "the user's settings are left as they were (on-device Augment default true)");
    }

    [TestMethod]
    public void EveryFineTuningSettingReachesTheRun()
    {
        using var encoder = BootMaeEncoder.CreateRandom(Tiny, seed: 2);
        var options = new BootMaeImageClassificationTrainer.Options { Encoder = encoder };
        var carried = SetEveryMemberToAnotherValue(options.Training, ResolvedFineTune, encoder);
        options.Seed = 17;

        var run = BootMaeImageClassificationTrainer.RunSettings(options, BootMaeHost.ResolveSeed(options.Seed, env: null), BootMaeHost.ResolveDevice(options, env: null));

        Assert.AreNotSame(options.Training, run);
        AssertCarried(carried, run, new FineTuneSettings());
        Assert.IsFalse(run.Augment, "the ML.NET layer augments while decoding, never on the device as well");
        Assert.AreEqual(17, run.Seed);
        Assert.IsNull(BootMaeImageClassificationTrainer.RunSettings(new() { Encoder = encoder }, 1, BootMaeHost.ResolveDevice(options, env: null)).LayerDecay,
            "with a pretrained encoder, a null LayerDecay is chosen for its depth by the engine");
        Assert.AreEqual(1.0, BootMaeImageClassificationTrainer.RunSettings(new(), 1, BootMaeHost.ResolveDevice(options, env: null)).LayerDecay,
            "a random encoder gets no layer decay");
        Assert.IsNull(BootMaeImageClassificationTrainer.RunSettings(new() { Encoder = encoder }, 1, BootMaeHost.ResolveDevice(options, env: null)).HeadWarmupFraction,
            "with a pretrained encoder, a null HeadWarmupFraction is chosen from the labels per class by the engine");
        Assert.AreEqual(0.0, BootMaeImageClassificationTrainer.RunSettings(new(), 1, BootMaeHost.ResolveDevice(options, env: null)).HeadWarmupFraction,
            "a random encoder gets no head warm-up");
    }

    private static Dictionary<string, string> With(Dictionary<string, string> shared, Dictionary<string, string> own) =>
        shared.Concat(own).ToDictionary(kv => kv.Key, kv => kv.Value);

    private static T Options<T>(object estimator) =>
        (T)estimator.GetType().GetField("_options", BindingFlags.Instance | BindingFlags.NonPublic)!.GetValue(estimator)!;

    private static BootMaePretrainingEstimator.Options Options(BootMaePretrainingEstimator estimator) => Options<BootMaePretrainingEstimator.Options>(estimator);

    private static BootMaeImageClassificationTrainer.Options Options(BootMaeImageClassificationTrainer trainer) => Options<BootMaeImageClassificationTrainer.Options>(trainer);

    private sealed record Member(string Name, Type Type, Func<object, object?> Get, Action<object, object?> Set);

    // Public instance fields and settable properties (the settings models use both).
    private static Dictionary<string, Member> Members(Type type) =>
        type.GetFields(BindingFlags.Instance | BindingFlags.Public).Select(f => new Member(f.Name, f.FieldType, f.GetValue, f.SetValue))
            .Concat(type.GetProperties(BindingFlags.Instance | BindingFlags.Public).Where(p => p.CanRead && p.CanWrite && p.GetSetMethod() is not null && p.GetIndexParameters().Length == 0)
                .Select(p => new Member(p.Name, p.PropertyType, p.GetValue, p.SetValue)))
            .ToDictionary(m => m.Name);

    // Every Options member not listed as ML.NET-only must be a settings member of the same type that reads and writes the
    // carried settings: a value set on the Options is seen on the settings, and one set on the settings is seen on the Options.
    private static int AssertPassThrough(object options, Func<object, object> training, Dictionary<string, string> mlNetOnly, BootMaeEncoder encoder)
    {
        var optionMembers = Members(options.GetType());
        foreach (var name in mlNetOnly.Keys)
        {
            Assert.IsTrue(optionMembers.ContainsKey(name), $"the ML.NET-only member '{name}' no longer exists; drop it from the list");
        }

        var settings = training(options);
        var settingsMembers = Members(settings.GetType());
        var problems = new List<string>();
        int forwarded = 0;
        foreach (var member in optionMembers.Values.Where(m => !mlNetOnly.ContainsKey(m.Name)))
        {
            if (!settingsMembers.TryGetValue(member.Name, out var target) || target.Type != member.Type)
            {
                problems.Add($"{member.Name}: not a {settings.GetType().Name} member of type {member.Type.Name} (put it in the settings model and forward it, or list it as ML.NET-only)");
                continue;
            }

            Assert.AreEqual(target.Get(settings), member.Get(options), $"{member.Name}: the Options read the settings' default");
            object? viaOptions = AnotherValue(member.Type, member.Get(options), encoder);
            member.Set(options, viaOptions);
            if (!Equals(viaOptions, target.Get(settings)))
            {
                problems.Add($"{member.Name}: set {viaOptions ?? "null"} on the Options, the settings hold {target.Get(settings) ?? "null"}");
            }

            object? viaSettings = AnotherValue(member.Type, viaOptions, encoder);
            target.Set(settings, viaSettings);
            if (!Equals(viaSettings, member.Get(options)))
            {
                problems.Add($"{member.Name}: set {viaSettings ?? "null"} on the settings, the Options read {member.Get(options) ?? "null"}");
            }

            forwarded++;
        }

        Assert.IsEmpty(problems, "Options members that do not pass through to Options.Training:\n" + string.Join("\n", problems));
        return forwarded;
    }

    // Sets each settings member the run should receive unchanged to a value other than its default; returns those members and values.
    private static List<(string Name, object? Value)> SetEveryMemberToAnotherValue(object settings, Dictionary<string, string> resolved, BootMaeEncoder encoder)
    {
        var members = Members(settings.GetType());
        foreach (var name in resolved.Keys)
        {
            Assert.IsTrue(members.ContainsKey(name), $"the resolved setting '{name}' no longer exists; drop it from the list");
        }

        var carried = new List<(string, object?)>();
        foreach (var member in members.Values.Where(m => !resolved.ContainsKey(m.Name)))
        {
            object? value = AnotherValue(member.Type, member.Get(settings), encoder);
            member.Set(settings, value);
            carried.Add((member.Name, value));
        }

        return carried;
    }

    private static void AssertCarried(List<(string Name, object? Value)> carried, object run, object engineDefaults)
    {
        var members = Members(run.GetType());
        var lost = new List<string>();
        foreach (var (name, value) in carried)
        {
            object? actual = members[name].Get(run);
            if (!Equals(value, actual))
            {
                lost.Add($"{name}: set {value ?? "null"}, the run got {actual ?? "null"}");
            }
            else
            {
                Assert.AreNotEqual(members[name].Get(engineDefaults), actual, $"{name}: the test value must differ from the default to show it was carried");
            }
        }

        Assert.IsEmpty(lost, "settings the run's copy lost:\n" + string.Join("\n", lost));
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
