using Microsoft.ML.BootMae.Training;
using Microsoft.VisualStudio.TestTools.UnitTesting;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Tests;

/// <summary>
/// <see cref="OwnedAdamW"/> replaces TorchSharp's AdamW (whose step leaves implicit Scalars to the finalizer): from the
/// same weights and gradients it must give the same bits, step after step, and read and write the same state bytes.
/// </summary>
[TestClass]
public sealed class OwnedAdamWTests
{
    private const double Beta1 = ParameterGroups.Beta1, Beta2 = ParameterGroups.Beta2, Epsilon = ParameterGroups.Epsilon;

    // (lr scale, weight decay) of each group: decayed matrices at two layer-decay scales, and a no-decay group.
    private static readonly (double Scale, double WeightDecay)[] GroupSpecs = { (1.0, 0.05), (0.65, 0.05), (1.0, 0.0) };

    [TestMethod]
    public void StepsAreBitIdenticalToTorchSharpAdamW()
    {
        using var reference = new Model(seed: 1);
        using var owned = new Model(seed: 1);
        using var torchSharp = reference.TorchSharpAdamW(1e-2);
        using var mine = owned.OwnedAdamW(1e-2);

        for (int step = 0; step < 30; step++)
        {
            double lr = LearningRate(step);
            SetLearningRates(torchSharp, mine, lr);
            reference.Backward(step, torchSharp.zero_grad);
            owned.Backward(step, mine.ZeroGrad);
            torchSharp.step();
            mine.Step();
            AssertSame(reference, torchSharp, owned, mine, $"step {step}");
        }

        // The untouched parameter (never a gradient) is skipped by both: step count 0, moments and weights as created.
        Assert.AreEqual(0L, mine.StateOf(owned.Parameters.Count - 1).Step);
        CollectionAssert.AreEqual(Save(torchSharp.save_state_dict), Save(mine.Save), "the saved state, byte for byte");
    }

    [TestMethod]
    public void ResumesBitIdenticallyFromEitherOptimizersState()
    {
        using var straight = new Model(seed: 2);
        using var straightOptimizer = straight.TorchSharpAdamW(3e-3);
        using var resumed = new Model(seed: 2);

        for (int step = 0; step < 8; step++)
        {
            double lr = LearningRate(step);
            SetLearningRates(straightOptimizer, null, lr);
            straight.Backward(step, straightOptimizer.zero_grad);
            straightOptimizer.step();
        }

        // A checkpoint written by TorchSharp's AdamW (the format of existing checkpoints) resumes in OwnedAdamW …
        resumed.CopyWeightsFrom(straight);
        byte[] torchSharpState = Save(straightOptimizer.save_state_dict);
        using var mine = resumed.OwnedAdamW(1.0);
        Load(torchSharpState, mine.Load);
        Assert.AreEqual(LearningRate(7) * GroupSpecs[1].Scale, mine.ParamGroups[1].LearningRate, "the learning rates come from the state");

        for (int step = 8; step < 16; step++)
        {
            double lr = LearningRate(step);
            SetLearningRates(straightOptimizer, mine, lr);
            straight.Backward(step, straightOptimizer.zero_grad);
            resumed.Backward(step, mine.ZeroGrad);
            straightOptimizer.step();
            mine.Step();
            AssertSame(straight, straightOptimizer, resumed, mine, $"resumed step {step}");
        }

        // … and OwnedAdamW's state loads into TorchSharp's AdamW and into another OwnedAdamW unchanged.
        byte[] ownedState = Save(mine.Save);
        using var back = resumed.TorchSharpAdamW(1.0);
        Load(ownedState, back.load_state_dict);
        CollectionAssert.AreEqual(ownedState, Save(back.save_state_dict), "OwnedAdamW state through TorchSharp's AdamW");
        using var again = resumed.OwnedAdamW(1.0);
        Load(ownedState, again.Load);
        CollectionAssert.AreEqual(ownedState, Save(again.Save), "OwnedAdamW state through OwnedAdamW");
    }

    [TestMethod]
    public void LoadRejectsAForeignStateAndChangesNothing()
    {
        using var model = new Model(seed: 3);
        using var mine = model.OwnedAdamW(1e-3);
        model.Backward(0, mine.ZeroGrad);
        mine.Step();
        byte[] before = Save(mine.Save);

        // Another parameter layout, another weight decay, and a truncated stream.
        using var other = new Model(seed: 3, extra: true);
        using var otherOptimizer = other.OwnedAdamW(1e-3);
        Assert.ThrowsExactly<InvalidDataException>(() => Load(Save(otherOptimizer.Save), mine.Load));
        using var decayed = new OwnedAdamW(new[] { new OwnedAdamW.ParamGroup(model.Parameters, 1e-3, 0.1, Beta1, Beta2, Epsilon) });
        using var oneGroup = new OwnedAdamW(new[] { new OwnedAdamW.ParamGroup(model.Parameters, 1e-3, 0.05, Beta1, Beta2, Epsilon) });
        Assert.ThrowsExactly<InvalidDataException>(() => Load(Save(decayed.Save), oneGroup.Load));
        Assert.ThrowsExactly<EndOfStreamException>(() => Load(before[..^1], mine.Load));
        using var reshaped = new Parameter(zeros(model.Parameters[0].shape.Reverse().ToArray()));
        using var otherShape = new OwnedAdamW(new[] { new OwnedAdamW.ParamGroup(new[] { reshaped }, 1e-3, 0.05, Beta1, Beta2, Epsilon) });
        using var firstOnly = new OwnedAdamW(new[] { new OwnedAdamW.ParamGroup(new[] { model.Parameters[0] }, 1e-3, 0.05, Beta1, Beta2, Epsilon) });
        Assert.ThrowsExactly<InvalidDataException>(() => Load(Save(otherShape.Save), firstOnly.Load));

        CollectionAssert.AreEqual(before, Save(mine.Save), "a failed load leaves the optimizer as it was");
    }

    [TestMethod]
    public void DisposeFreesTheMoments()
    {
        using var model = new Model(seed: 4);
        var mine = model.OwnedAdamW(1e-3);
        var (_, expAvg, expAvgSq) = mine.StateOf(0);
        mine.Dispose();
        Assert.IsTrue(expAvg.IsInvalid && expAvgSq.IsInvalid);
        Assert.ThrowsExactly<ObjectDisposedException>(mine.Step);
    }

    // A warmup-then-decay schedule, so every step has another learning rate.
    private static double LearningRate(int step) => step < 5 ? 1e-2 * (step + 1) / 5 : 1e-2 * Math.Pow(0.9, step - 5);

    private static void SetLearningRates(AdamW? torchSharp, OwnedAdamW? mine, double lr)
    {
        for (int i = 0; i < GroupSpecs.Length; i++)
        {
            if (torchSharp is not null)
            {
                torchSharp.ParamGroups.ElementAt(i).LearningRate = lr * GroupSpecs[i].Scale;
            }

            if (mine is not null)
            {
                mine.ParamGroups[i].LearningRate = lr * GroupSpecs[i].Scale;
            }
        }
    }

    private static void AssertSame(Model reference, AdamW torchSharp, Model owned, OwnedAdamW mine, string what)
    {
        var states = torchSharp.state_dict().State.Cast<AdamW.State>().ToList();
        Assert.HasCount(owned.Parameters.Count, states);
        for (int i = 0; i < states.Count; i++)
        {
            AssertBits(reference.Parameters[i], owned.Parameters[i], $"{what}: parameter {i}");
            var (step, expAvg, expAvgSq) = mine.StateOf(i);
            Assert.AreEqual(states[i].step, step, $"{what}: step count {i}");
            AssertBits(states[i].exp_avg, expAvg, $"{what}: exp_avg {i}");
            AssertBits(states[i].exp_avg_sq, expAvgSq, $"{what}: exp_avg_sq {i}");
        }
    }

    private static void AssertBits(Tensor expected, Tensor actual, string what)
    {
        Assert.AreEqual(expected.dtype, actual.dtype, what + ": dtype");
        CollectionAssert.AreEqual(expected.shape, actual.shape, what + ": shape");
        CollectionAssert.AreEqual(expected.bytes.ToArray(), actual.bytes.ToArray(), what + ": bits");
    }

    private static byte[] Save(Action<BinaryWriter> save)
    {
        using var stream = new MemoryStream();
        using (var writer = new BinaryWriter(stream, System.Text.Encoding.UTF8, leaveOpen: true))
        {
            save(writer);
        }

        return stream.ToArray();
    }

    private static void Load(byte[] bytes, Action<BinaryReader> load)
    {
        using var reader = new BinaryReader(new MemoryStream(bytes));
        load(reader);
    }

    /// <summary>
    /// Parameters of the shapes and dtypes training meets (matrices, biases, a 3-D token, a float64 one), spread over
    /// <see cref="GroupSpecs"/>, plus one that never gets a gradient; a loss whose gradient depends on the weights, so
    /// that any difference would grow.
    /// </summary>
    private sealed class Model : IDisposable
    {
        private readonly int _seed;

        public Model(int seed, bool extra = false)
        {
            _seed = seed;
            using var generator = new Generator((ulong)seed);
            var shapes = new (long[] Shape, ScalarType Type, int Group)[]
            {
                (new long[] { 8, 6 }, ScalarType.Float32, 0), (new long[] { 1, 2, 6 }, ScalarType.Float32, 0),
                (new long[] { 6, 5 }, ScalarType.Float32, 1), (new long[] { 4, 3 }, ScalarType.Float64, 1),
                (new long[] { 6 }, ScalarType.Float32, 2), (new long[] { 5 }, ScalarType.Float32, 2),
                (new long[] { 3 }, ScalarType.Float32, 2),
            };
            foreach (var (shape, type, group) in extra ? shapes.Append((new long[] { 2 }, ScalarType.Float32, 2)) : shapes)
            {
                Parameters.Add(new Parameter(randn(shape, dtype: type, generator: generator)));
                Groups.Add(group);
            }
        }

        public List<Parameter> Parameters { get; } = new();

        public List<int> Groups { get; } = new();

        private IEnumerable<Parameter> InGroup(int group) => Parameters.Where((_, i) => Groups[i] == group);

        public AdamW TorchSharpAdamW(double lr) => optim.AdamW(
            GroupSpecs.Select((g, i) => new AdamW.ParamGroup(InGroup(i), lr * g.Scale, Beta1, Beta2, Epsilon, g.WeightDecay, false, false)),
            lr, Beta1, Beta2, Epsilon, 0.05);

        public OwnedAdamW OwnedAdamW(double lr) => new(
            GroupSpecs.Select((g, i) => new OwnedAdamW.ParamGroup(InGroup(i), lr * g.Scale, g.WeightDecay, Beta1, Beta2, Epsilon)));

        // loss = Σ a·p² + b·p over every parameter but the last, with a, b drawn from (seed, step).
        public void Backward(int step, Action zeroGrad)
        {
            using var scope = NewDisposeScope();
            using var generator = new Generator((ulong)(_seed * 1000 + step));
            zeroGrad();
            Tensor? loss = null;
            foreach (var p in Parameters.Take(Parameters.Count - 1))
            {
                var a = rand(p.shape, dtype: p.dtype, generator: generator);
                var b = randn(p.shape, dtype: p.dtype, generator: generator);
                var term = (a * p * p + b * p).sum().to(ScalarType.Float64);
                loss = loss is null ? term : loss + term;
            }

            loss!.backward();
        }

        public void CopyWeightsFrom(Model other)
        {
            using var noGrad = no_grad();
            for (int i = 0; i < Parameters.Count; i++)
            {
                Parameters[i].copy_(other.Parameters[i]);
            }
        }

        public void Dispose()
        {
            foreach (var p in Parameters)
            {
                p.Dispose();
            }
        }
    }
}
