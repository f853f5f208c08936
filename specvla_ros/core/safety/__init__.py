"""Safety: the gate every command passes, its YAML configuration, the action envelope that
constrains decoding, the collision scene, the arm's kinematics and the final command guard."""
