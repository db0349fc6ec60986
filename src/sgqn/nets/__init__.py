"""The networks: the DMC-GB lineage's (`sac`), DrQ-v2's (`drqv2`), SGQN's attribution decoder (`decoder`),
all with ReLUs that guided backprop can switch (`guided_relu`), sized by `NetConfig`."""
